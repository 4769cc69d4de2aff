"""``saelens-lite ablate``: turn SAE features off; see what the model writes and what each
token's loss does."""

from __future__ import annotations

import argparse
import json

from saelens_lite.cli._common import Formatter
from saelens_lite.cli._interventions_common import (
    add_feature_args,
    add_generation_args,
    add_splice_args,
    feature_edits,
    load_model_and_saes,
    print_generation,
    quoted,
)


def add(sub) -> None:
    p = sub.add_parser("ablate", help="turn SAE features off: continuations and per-token loss change",
                       formatter_class=Formatter,
                       description="Splice the SAEs in (error term kept) and zero-ablate each --feature. With "
                                   "--prompt: the clean and the ablated continuations side by side. With --text: "
                                   "per token, the next-token loss of predicting it (nats) clean and ablated, "
                                   "their difference and the feature's activation there; means over the scored "
                                   "tokens. Give --prompt, --text or both.")
    add_splice_args(p)
    add_feature_args(p, "zero-ablate")
    p.add_argument("--text", default=None, help="text whose per-token loss change to show")
    add_generation_args(p, prompt_required=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saelens_lite.interventions import ablate, generate, token_loss_effects

    if not args.prompt and args.text is None:
        raise ValueError("nothing to do: give --prompt (continuations) and/or --text (per-token loss change)")
    lm, saes = load_model_and_saes(args)
    edits = feature_edits(args, ablate)
    out: dict = {"generation": None, "loss_effects": None}
    if args.text is not None:
        out["loss_effects"] = token_loss_effects(lm, args.text, saes, edits, exclude=args.exclude).to_dict()
    if args.prompt:
        out["generation"] = generate(lm, args.prompt, saes, edits, max_new_tokens=args.max_new_tokens,
                                     temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                                     exclude=args.exclude).to_dict()
    if args.json:
        print(json.dumps(out, indent=1, allow_nan=False))
        return 0
    if out["generation"] is not None:
        print_generation(out["generation"], None, "ablated")
    if out["loss_effects"] is not None:
        if out["generation"] is not None:
            print()
        print_loss_effects(out["loss_effects"])
    return 0


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def print_loss_effects(d: dict) -> None:
    """A table of ``TokenLossEffects.to_dict()``: one row per token, then the means."""
    if not d["tokens"]:
        return
    hooks = {f["hook"] for f in d["features"]}
    names = [str(f["feature"]) if len(hooks) == 1 else f"{f['hook']}:{f['feature']}" for f in d["features"]]
    print(f"per-token loss of {quoted(d['text'])} (nats, predicting each token from those before it); "
          "act F = feature F's activation at the token; * = left out of the means")
    tw = min(max(len(quoted(t["token"])) for t in d["tokens"]), 24)
    acts = "".join(f"  {'act ' + n:>10}" for n in names)
    print(f"  {'pos':>4}  {'token':<{tw}}{acts}  {'clean':>8}  {'ablated':>8}  {'delta':>9}")
    for t in d["tokens"]:
        row = "".join(f"  {a:>10.4g}" for a in t["activations"])
        mark = " " if t["scored"] else "*"
        print(f"  {t['position']:>4}{mark} {quoted(t['token']):<{tw}}{row}  {_num(t['loss_clean'], '8.4f'):>8}  "
              f"{_num(t['loss_edited'], '8.4f'):>8}  {_num(t['delta'], '+9.4f'):>9}")
    s = d["totals"]
    print(f"mean over {s['n_scored']} scored tokens: clean {_num(s['loss_clean'], '.4f')}, ablated "
          f"{_num(s['loss_edited'], '.4f')}, delta {_num(s['delta'], '+.4f')} (sum {s['delta_sum']:+.4f})")
