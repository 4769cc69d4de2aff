"""Graph edges against interventions on SmolLM2: which response of the real model makes the total
effect of ablating a feature differ from its edge weight (issue 27; docs/circuits.md, "Measured").

For each prompt: trace it (``attribute_graph``, ``--max-feature-nodes``), take the ``--top``
strongest feature -> first-logit and feature -> feature edges (``strongest_edges``), and run
``intervention_check`` once per regime: ``frozen`` (attention patterns, norm denominators, the
other features and the error terms held: the local replacement model, so measured = weight),
``real`` (the spliced model: errors held, the rest responds; the CLI's ``--check``), ``model``
(nothing held: the model's own MLPs run, the source's ``a_f W_dec[f]`` subtracted), and
``hold-X`` (only the parts X held, ``+``-joined names from ``circuits.intervene.HOLD_PARTS``). Prints markdown tables: Pearson r of weight and measured
change per prompt and regime, split by edge type; and, pooled over the prompts, per class of
edge (layers between source and target, source at position 0 or not): edge count, r, and the
median of ``|measured - weight| / |weight|``. ``--layers 0-2`` keeps only those transcoders
(the others' MLPs become error nodes) for the few-layer contrast. ``--jsonl FILE`` writes
every edge with its measured change in every regime.

Usage:
    OMP_NUM_THREADS=1 python scripts/check_edges.py --transcoders runs/tc30/all --top 10 \\
        --regimes frozen real model hold-attention hold-attention+norms+errors hold-features+errors
    OMP_NUM_THREADS=1 python scripts/check_edges.py --transcoders runs/tc30/all --layers 0-2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import numpy as np

PROMPTS = ["The capital of France is Paris, and the capital of Germany is",
           "def add(a, b):\n    return a +",
           "import numpy as np\nx = np.zeros((3, 4))\nprint(x.",
           "One, two, three, four, five, six,"]
GAPS = [(1, 1), (2, 5), (6, 15), (16, 30)]


def regime_freeze(name: str):
    """``frozen`` -> True, ``real`` -> False, ``model`` -> (), ``hold-a+b`` -> ("a", "b")."""
    if name in ("frozen", "real"):
        return name == "frozen"
    if name == "model":
        return ()
    if not name.startswith("hold-"):
        raise SystemExit(f"--regimes {name!r}: choose frozen, real, model or hold-PART[+PART...]")
    return tuple(name[len("hold-"):].split("+"))


def pearson(w, m) -> float | None:
    w, m = np.asarray(w, float), np.asarray(m, float)
    if len(w) < 2 or w.std() == 0 or m.std() == 0:
        return None
    return float(np.corrcoef(w, m)[0, 1])


def fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def edge_class(e: dict, n_layers: int) -> dict:
    """Edge type, layers between source and target (the logit counts as layer ``n_layers``),
    whether the source sits at position 0."""
    logit = e["target"][0] == "logit"
    gap = (n_layers if logit else e["target"][0]) - e["source"][0]
    return {"type": "f->logit" if logit else "f->f", "gap": gap, "pos0": e["source"][1] == 0}


def load(args):
    from saelens_lite.circuits import load_transcoders
    from saelens_lite.lm.load import load_model

    lm = load_model(args.model)
    tcs = load_transcoders(args.transcoders, lm, require_all=args.layers is None)
    if args.layers is not None:
        lo, hi = (int(x) for x in args.layers.split("-"))
        keep = {i: tc for i, tc in tcs.by_layer.items() if lo <= i <= hi}
        tcs = dataclasses.replace(tcs, by_layer=keep, sources={i: tcs.sources[i] for i in keep})
    return lm, tcs


def run_prompt(lm, tcs, prompt: str, args) -> list[dict]:
    """Every checked edge of one prompt, with its measured change under each regime."""
    from saelens_lite.circuits.attribution import attribute_graph
    from saelens_lite.circuits.intervene import clean_state, intervention_check

    t = time.perf_counter()
    graph = attribute_graph(lm, tcs, prompt, max_feature_nodes=args.max_feature_nodes)
    state = clean_state(lm, tcs, prompt)  # the same for every regime
    edges: list[dict] = []
    for regime in args.regimes:
        check = intervention_check(lm, tcs, graph, top=args.top, freeze=regime_freeze(regime), state=state)
        if not edges:
            edges = [{"prompt": prompt, "source": e["source"], "target": list(e["target"]),
                      "weight": e["weight"], **edge_class(e, tcs.n_layers)} for e in check.edges]
        for edge, e in zip(edges, check.edges):
            edge[regime] = e["measured"]
    print(f"<!-- {prompt!r}: {graph.n_pos} tokens, {graph.n_features} feature nodes, "
          f"{len(edges)} edges, {time.perf_counter() - t:.0f} s -->", flush=True)
    return edges


def per_prompt_table(edges: list[dict], regimes: list[str]) -> None:
    cols = [f"{r}: {kind}" for r in regimes for kind in ("all", "f->logit", "f->f")]
    print("| prompt | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for prompt in dict.fromkeys(e["prompt"] for e in edges):
        mine = [e for e in edges if e["prompt"] == prompt]
        cells = []
        for r in regimes:
            for kind in ("all", "f->logit", "f->f"):
                sel = [e for e in mine if kind == "all" or e["type"] == kind]
                cells.append(fmt(pearson([e["weight"] for e in sel], [e[r] for e in sel])))
        print(f"| {prompt[:28]!r} | " + " | ".join(cells) + " |")


def class_table(edges: list[dict], regimes: list[str]) -> None:
    classes = [(f"{kind}, {lo}-{hi} layers", lambda e, k=kind, lo=lo, hi=hi: e["type"] == k and lo <= e["gap"] <= hi)
               for kind in ("f->logit", "f->f") for lo, hi in GAPS]
    classes += [("source at position 0", lambda e: e["pos0"]), ("source elsewhere", lambda e: not e["pos0"]),
                ("all", lambda e: True)]
    cols = [f"{r}: r, median rel. diff" for r in regimes if r != "frozen"]
    print("| edges (pooled over prompts) | n | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for name, test in classes:
        sel = [e for e in edges if test(e)]
        if not sel:
            continue
        cells = []
        for r in regimes:
            if r == "frozen":
                continue
            rel = statistics.median(abs(e[r] - e["weight"]) / abs(e["weight"]) for e in sel)
            cells.append(f"{fmt(pearson([e['weight'] for e in sel], [e[r] for e in sel]))}, {rel:.2f}")
        print(f"| {name} | {len(sel)} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--transcoders", required=True, metavar="DIR")
    ap.add_argument("--layers", default=None, metavar="LO-HI", help="keep only these transcoders")
    ap.add_argument("--prompts", nargs="+", default=PROMPTS)
    ap.add_argument("--max-feature-nodes", type=int, default=300)
    ap.add_argument("--top", type=int, default=10, help="edges of each type per prompt")
    ap.add_argument("--regimes", nargs="+", default=["frozen", "real"])
    ap.add_argument("--jsonl", default=None, help="write every edge as JSON to this file")
    args = ap.parse_args()
    for r in args.regimes:
        regime_freeze(r)
    lm, tcs = load(args)
    edges = [e for p in args.prompts for e in run_prompt(lm, tcs, p, args)]
    if args.jsonl:
        with open(args.jsonl, "w") as f:
            f.writelines(json.dumps(e) + "\n" for e in edges)
    print(f"\n{len(tcs.layers)} transcoders, top {args.top} edges of each type, "
          f"--max-feature-nodes {args.max_feature_nodes}\n")
    per_prompt_table(edges, args.regimes)
    print()
    class_table(edges, args.regimes)


if __name__ == "__main__":
    main()
