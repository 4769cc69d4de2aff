"""``saelens-lite attribute``: which SAE features (and error nodes) made the model predict a
token, by attribution patching; optionally checked against real ablations."""

from __future__ import annotations

import argparse
import json

from saelens_lite.cli._common import Formatter
from saelens_lite.cli._interventions_common import add_splice_args, load_model_and_saes, quoted


def add(sub) -> None:
    p = sub.add_parser("attribute", help="rank the SAE features behind a predicted token (attribution patching)",
                       formatter_class=Formatter,
                       description="Splice the SAEs in (error term kept, so the model is unchanged) and attribute "
                                   "m = logit(--target) at --position, minus logit(--contrast) when given, to "
                                   "every active (position, feature) and to each hook's error node: activation x "
                                   "gradient, the first-order change of m when that node is zero-ablated "
                                   "(attribution patching, Syed et al. 2023; Marks et al. 2024). --validate N "
                                   "ablates the top N nodes one at a time and prints Spearman's rank correlation "
                                   "between attributions and measured changes.")
    add_splice_args(p)
    p.add_argument("--prompt", required=True, help="the prompt")
    p.add_argument("--target", required=True,
                   help="the token whose logit is attributed: text that is exactly one token (mind the "
                        "leading space, e.g. ' Paris')")
    p.add_argument("--contrast", default=None, help="a second token: attribute logit(target) - logit(contrast)")
    p.add_argument("--position", type=int, default=-1,
                   help="where the logits are read (their prediction of the next token); -1: the last token")
    p.add_argument("--top", type=int, default=10, help="(position, feature) nodes to print; 0: all")
    p.add_argument("--validate", type=int, default=0, metavar="N",
                   help="ablate the top N nodes one at a time (one forward each) and report Spearman's rho "
                        "between attribution and the measured change; 0: skip")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saelens_lite.interventions import ablation_check, attribute

    if args.top < 0:
        raise ValueError(f"--top {args.top} is invalid; allowed: 0 (all) or an integer >= 1")
    if args.validate != 0 and args.validate < 2:
        raise ValueError(f"--validate {args.validate} is invalid; allowed: 0 (skip) or an integer >= 2")
    lm, saes = load_model_and_saes(args)
    att = attribute(lm, args.prompt, saes, args.target, contrast=args.contrast, position=args.position,
                    exclude=args.exclude)
    check = None
    if args.validate:
        check = ablation_check(lm, args.prompt, saes, args.target, contrast=args.contrast,
                               position=args.position, top_n=args.validate, exclude=args.exclude,
                               attribution=att).to_dict()
    out = {"attribution": att.to_dict(top=args.top or None), "validation": check}
    if args.json:
        print(json.dumps(out, indent=1, allow_nan=False))
    else:
        print_attribution(out["attribution"], check, several_hooks=len(saes) > 1)
    return 0


def print_attribution(d: dict, check: dict | None, *, several_hooks: bool) -> None:
    """Text of ``Attribution.to_dict()`` (+ ``AblationCheck.to_dict()``)."""
    m = f"logit({quoted(d['target']['token'])})"
    if d["contrast"] is not None:
        m += f" - logit({quoted(d['contrast']['token'])})"
    pos = d["position"]
    print(f"prompt: {quoted(d['prompt'])} ({len(d['tokens'])} tokens)")
    print(f"metric m = {m} at position {pos} ({quoted(d['tokens'][pos])}) = {d['metric']:.4f}")
    print(f"top {len(d['features'])} of {d['n_features']} active (position, feature) nodes by |attribution| "
          "(activation x dm/dactivation: the first-order change of m if the node is zero-ablated)")
    measured = {} if check is None else {(n["hook"], n["position"], n["feature"]): n["measured"]
                                         for n in check["nodes"]}
    tw = min(max([len(quoted(f["token"])) for f in d["features"]] + [5]), 20)
    head = f"  {'rank':>4}  {'pos':>4}  {'token':<{tw}}  {'feature':>7}  {'activation':>10}  {'attribution':>11}"
    print(head + ("  measured" if measured else "") + ("  hook" if several_hooks else ""))
    for r, f in enumerate(d["features"], 1):
        meas = measured.get((f["hook"], f["position"], f["feature"]))
        line = (f"  {r:>4}  {f['position']:>4}  {quoted(f['token']):<{tw}}  {f['feature']:>7}  "
                f"{f['activation']:>10.4g}  {f['attribution']:>+11.4g}")
        if measured:
            line += f"  {meas:>+8.4g}" if meas is not None else f"  {'':>8}"
        print(line + (f"  {f['hook']}" if several_hooks else ""))
    for hook, total in d["error_totals"].items():
        print(f"error node at {hook} (summed over positions): {total:+.4g}")
    if check is not None:
        rho = "undefined (a constant list)" if check["spearman"] is None else f"{check['spearman']:.3f}"
        print(f"validation: Spearman rho = {rho} between the attribution and the measured change of m when "
              f"each of the top {len(check['nodes'])} nodes is zero-ablated alone")
