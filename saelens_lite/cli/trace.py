"""``saelens-lite trace``: the attribution graph of a prompt, pruned, scored and written as the
JSON that circuit-tracer's and Neuronpedia's graph viewer read."""

from __future__ import annotations

import argparse
import pathlib

from saelens_lite.cli._common import Formatter, model_help


def add(sub) -> None:
    from saelens_lite.circuits.trace import TraceConfig
    from saelens_lite.lm.tokens import EXCLUDE_CHOICES
    from saelens_lite.util.dataclass_args import add_dataclass_args

    p = sub.add_parser("trace", help="attribution graph of a prompt through per-layer transcoders (circuit tracing)",
                       formatter_class=Formatter,
                       description="Replace every MLP by its transcoder (the error term kept, so the model is "
                                   "unchanged), freeze attention patterns and norm denominators, and compute the "
                                   "direct effect of every active feature, error node and token embedding on every "
                                   "feature and logit (Ameisen et al. 2025, 'Circuit Tracing'). The graph is pruned "
                                   "by influence on the logits and written with its replacement and completeness "
                                   "scores in the circuit-tracer / Neuronpedia graph JSON.")
    p.add_argument("--model", required=True, help=model_help())
    p.add_argument("--transcoders", required=True, metavar="DIR",
                   help="folder holding one transcoder folder per layer (cfg.json + sae.safetensors, trained "
                        "with --hooks blocks.i.hook_mlp_in --target-hook blocks.i.hook_mlp_out), at any depth")
    p.add_argument("--prompt", required=True, help="the prompt")
    p.add_argument("--out", required=True, help="the graph's JSON file (its name without .json is the slug)")
    p.add_argument("--site", default=None, metavar="SITE",
                   help="also put the graph into the graph pages of the dashboard site SITE (SITE/graphs/, "
                        "created when missing): feature nodes link to the feature dashboards of the transcoders "
                        "inside SITE (docs/circuits.md)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--check", type=int, default=0, metavar="N",
                   help="check the N strongest feature->logit and N strongest feature->feature edges by "
                        "ablating their source, twice: in the model itself (its own MLPs, the feature's "
                        "output subtracted, as circuit-tracer's feature_intervention) and in the spliced "
                        "model (every transcoder responding, error terms held); print the correlation of "
                        "weight and measured change for each; stored in the JSON's metadata; 0: skip")
    add_dataclass_args(p, TraceConfig, choices={"exclude": EXCLUDE_CHOICES})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saelens_lite.circuits import load_transcoders
    from saelens_lite.circuits.trace import TraceConfig, trace
    from saelens_lite.lm.load import load_model
    from saelens_lite.util.atomic import write_json
    from saelens_lite.util.dataclass_args import dataclass_from_args

    if args.check < 0:
        raise ValueError(f"--check {args.check} is invalid; allowed: 0 (skip) or an integer >= 1")
    config = dataclass_from_args(TraceConfig, args)
    out = pathlib.Path(args.out)
    if args.site is not None:
        from saelens_lite.dashboards.graphs import check_site, check_slug

        check_site(args.site)  # before the work: no graph written and then refused
        check_slug(out.stem)
    lm = load_model(args.model, device=args.device)
    tcs = load_transcoders(args.transcoders, lm, require_all=not config.allow_missing_layers)
    result = trace(lm, tcs, args.prompt, config)
    doc = result.to_json(lm.tokenizer, slug=out.stem)
    check = None
    if args.check:
        from saelens_lite.circuits.intervene import clean_state, intervention_check

        state = clean_state(lm, tcs, result.graph.prompt, config.exclude)  # shared by both modes
        check = {mode: intervention_check(lm, tcs, result.graph, top=args.check, freeze=freeze,
                                          exclude=config.exclude, state=state).to_dict()
                 for mode, freeze in (("model", ()), ("spliced", False))}
        doc["metadata"]["intervention_check"] = check["model"]
        doc["metadata"]["intervention_check_spliced"] = check["spliced"]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, doc)
    g = result.graph
    print(f"traced {g.n_pos} tokens through {len(tcs.layers)} of {tcs.n_layers} layers' transcoders in "
          f"{result.seconds:.1f} s: {g.n_features} of {g.n_active} active features as nodes, {g.n_logits} logit nodes "
          f"(p = {float(g.logit_probs.sum()):.3f}); reconstruction error {g.reconstruction_error():.2g}")
    print(f"pruned to {len(doc['nodes'])} nodes and {len(doc['links'])} links (node threshold "
          f"{config.node_threshold}, edge threshold {config.edge_threshold}); replacement score "
          f"{result.scores.replacement:.3f}, completeness score {result.scores.completeness:.3f} (unpruned graph)")
    if check is not None:
        r = {m: "undefined" if c["pearson"] is None else f"{c['pearson']:.3f}" for m, c in check.items()}
        print(f"intervention check over {len(check['model']['edges'])} edges, Pearson r between edge weight "
              f"and the change of the target when the source is ablated: {r['model']} in the model itself, "
              f"{r['spliced']} in the spliced model with error terms held (docs/circuits.md)")
    print(f"wrote {out}")
    if args.site is not None:
        from saelens_lite.dashboards.graphs import add_graphs, graphs_dir

        (slug,) = add_graphs(args.site, [out])
        page = graphs_dir(args.site) / "index.html"
        print(f"graph page: file://{page.resolve()}#g/{slug} (or saelens-lite serve {args.site})")
    return 0
