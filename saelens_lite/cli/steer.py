"""``saelens-lite steer``: continue prompts with features of spliced SAEs turned up, beside the
clean continuation. The options and loading it shares with ``ablate`` and ``attribute`` are in
``cli._interventions_common``.
"""

from __future__ import annotations

import argparse
import json

from saelens_lite.cli._common import Formatter
from saelens_lite.cli._interventions_common import (
    add_feature_args,
    add_generation_args,
    add_splice_args,
    load_model_and_saes,
    parse_feature,
    print_generation,
    site_stats,
)

MODES = ("add", "clamp", "scale")


def add(sub) -> None:
    p = sub.add_parser("steer", help="generate with SAE features turned up, beside the clean model",
                       formatter_class=Formatter,
                       description="Continue each --prompt with the clean model and with the SAEs spliced in and "
                                   "each --feature steered: by default its decoder direction is added at every "
                                   "position, --strength times (in units of the feature's max activation when "
                                   "--dashboard gives a site of that SAE, else in raw units of the unit-norm "
                                   "direction: the output says which). Prints both continuations side by side.")
    add_splice_args(p)
    add_feature_args(p, "steer")
    p.add_argument("--strength", type=float, nargs="+", default=[4.0], metavar="S",
                   help="add: alpha; clamp: the code value; scale: the factor. One value for every "
                        "--feature, or one per --feature in order")
    p.add_argument("--mode", choices=MODES, default="add",
                   help="add: c_f += S * unit (the direction added to the residual); clamp: c_f = S; "
                        "scale: c_f *= S (Templeton et al. 2024 clamp, Turner et al. 2023 add)")
    p.add_argument("--dashboard", action="append", default=None, metavar="SITE",
                   help="site written by saelens-lite dashboard for an --sae: --strength of add is then in "
                        "units of each feature's max activation; repeat for several SAEs")
    add_generation_args(p, prompt_required=True)
    p.set_defaults(func=run)


def strengths(args: argparse.Namespace) -> list[float]:
    s = args.strength
    if len(s) == 1:
        return s * len(args.feature)
    if len(s) != len(args.feature):
        raise ValueError(f"{len(s)} --strength values for {len(args.feature)} --feature: give one, or one per "
                         "--feature")
    return s


def run(args: argparse.Namespace) -> int:
    from saelens_lite.interventions import FeatureEdit, generate

    lm, saes = load_model_and_saes(args)
    stats = site_stats(args, saes)
    edits = [FeatureEdit(args.mode, f, value, h, args.positions)
             for (h, f), value in zip(map(parse_feature, args.feature), strengths(args))]
    result = generate(lm, args.prompt, saes, edits, max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, top_k=args.top_k, seed=args.seed, stats=stats,
                      exclude=args.exclude)
    d = result.to_dict()
    if args.json:
        print(json.dumps(d, indent=1, allow_nan=False))
    else:
        print_generation(d, stats, "steered")
    return 0
