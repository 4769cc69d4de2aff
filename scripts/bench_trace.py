"""Attribution graphs on SmolLM2: time and memory against prompt length (issue 27, item 5;
docs/circuits.md, "Measured"; docs/benchmarks.md).

``lengths``: for each prompt length N (``--tokens 8 16 32``) and each ``--max-feature-nodes``
(``all`` for every active feature), trace the first N tokens of ``--prompt`` in a fresh process
(``child``), so that each peak RSS (``resource.getrusage``, the child's own) starts from an empty
process; a trace longer than ``--timeout`` seconds is killed and reported as such. Prints a
markdown table: active features, feature nodes, nodes, kept nodes / links (the pruned graph's
JSON, default thresholds unless given), seconds of ``trace`` (attribution, pruning, scores; not
loading), peak RSS and RSS once the model and transcoders are loaded, replacement and
completeness scores, and the reconstruction identity's relative error. ``--jsonl FILE`` also
appends each row as JSON.

``setup``: the cost of installing the replacement model's hooks: how many times one forward of
``circuits.replacement.replacement_forward`` walks the module tree (top-level
``named_modules()`` calls, counted by a wrapper around ``torch.nn.Module.named_modules``), that
forward's wall time (min and median of 5) and a whole trace's with ``--max-feature-nodes 64``
(min and median of 3). Run it with ``PYTHONPATH`` at two checkouts to compare them.

Usage:
    OMP_NUM_THREADS=1 python scripts/bench_trace.py lengths --transcoders runs/tc30/all --tokens 8 16 32 \\
        --max-feature-nodes all 1000 --timeout 900
    OMP_NUM_THREADS=1 python scripts/bench_trace.py setup --transcoders runs/tc30/all
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

PROMPT = ("The capital of France is Paris, and the capital of Germany is Berlin. In Python, the function "
          "len returns the number of items in a list, and sorted returns a new list in ascending order, "
          "while the method sort changes the list in place and returns None.")
COLUMNS = [("tokens", "tokens"), ("max feature nodes", "max_feature_nodes"), ("active features", "n_active"),
           ("feature nodes", "n_features"), ("nodes", "n_nodes"), ("kept nodes / links", "kept"),
           ("seconds", "seconds"), ("peak RSS (MB)", "peak_rss_mb"), ("RSS loaded (MB)", "loaded_rss_mb"),
           ("replacement", "replacement"), ("completeness", "completeness"),
           ("reconstruction error", "reconstruction_error")]


def rss_mb() -> float:
    """The current resident set of this process (Linux /proc), in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    """The peak resident set of this process, in MB (10^6 bytes, as `rss_mb`): Linux gives
    ru_maxrss in KiB, so KiB / 1e3 would read 2.4% low and fall below the current RSS."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def prompt_prefix(tokenizer, prompt: str, n: int) -> str:
    """The text whose tokenization is ``n`` tokens (special ones the tokenizer adds, e.g. BOS,
    included): the start of ``prompt``. An error when the prompt is shorter or the prefix does
    not tokenize back to the prompt's first tokens."""
    added = len(tokenizer("")["input_ids"])  # BOS and the like
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(ids) < n - added:
        raise SystemExit(f"--tokens {n}: the prompt has only {len(ids) + added} tokens; give a longer --prompt")
    text = tokenizer.decode(ids[:n - added])
    if tokenizer(text, add_special_tokens=False)["input_ids"] != ids[:n - added]:
        raise SystemExit(f"--tokens {n}: the prompt's first {n} tokens do not tokenize back to themselves")
    return text


def load(args):
    from saelens_lite.circuits import load_transcoders
    from saelens_lite.lm.load import load_model

    lm = load_model(args.model)
    return lm, load_transcoders(args.transcoders, lm, require_all=not args.allow_missing_layers)


def child(args) -> None:
    """One trace in this process; prints one JSON line."""
    from saelens_lite.circuits.trace import TraceConfig, trace

    lm, tcs = load(args)
    loaded = rss_mb()
    m = None if args.max_feature_nodes == "all" else int(args.max_feature_nodes)
    config = TraceConfig(max_feature_nodes=m, allow_missing_layers=args.allow_missing_layers,
                         batch_size=args.batch_size)
    result = trace(lm, tcs, prompt_prefix(lm.tokenizer, args.prompt, args.tokens), config)
    doc = result.to_json(lm.tokenizer, slug="bench")
    g = result.graph
    print(json.dumps({
        "tokens": g.n_pos, "max_feature_nodes": args.max_feature_nodes, "n_active": g.n_active,
        "n_features": g.n_features, "n_nodes": g.n_nodes, "n_logits": g.n_logits,
        "kept": f"{len(doc['nodes'])} / {len(doc['links'])}", "seconds": round(result.seconds, 1),
        "peak_rss_mb": round(peak_rss_mb()), "loaded_rss_mb": round(loaded),
        "replacement": round(result.scores.replacement, 3), "completeness": round(result.scores.completeness, 3),
        "reconstruction_error": f"{g.reconstruction_error():.1e}", "layers": len(tcs.layers),
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None}))


def common_args(args) -> list[str]:
    out = ["--model", args.model, "--transcoders", args.transcoders, "--prompt", args.prompt,
           "--batch-size", str(args.batch_size)]
    return out + (["--allow-missing-layers"] if args.allow_missing_layers else [])


def memory_limit(gb: float | None):
    """A pre-exec function capping the child's address space (an allocation past it fails in the
    child instead of waking the kernel's OOM killer on a shared machine), or None."""
    if gb is None:
        return None
    limit = int(gb * 1e9)
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_one(args, n: int, m: str) -> dict:
    cmd = [sys.executable, __file__, "child", *common_args(args), "--tokens", str(n), "--max-feature-nodes", m]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                              preexec_fn=memory_limit(args.max_address_space_gb))
    except subprocess.TimeoutExpired:
        return {"tokens": n, "max_feature_nodes": m, "seconds": f"> {args.timeout} (killed)"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"tokens": n, "max_feature_nodes": m, "seconds": f"failed (exit {proc.returncode}): {tail[0]}"}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["process_seconds"] = round(time.perf_counter() - t, 1)
    return row


def lengths(args) -> None:
    print("| " + " | ".join(c for c, _ in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS), flush=True)
    for m in args.max_feature_nodes:
        for n in args.tokens:
            row = run_one(args, n, m)
            print("| " + " | ".join(str(row.get(k, "")) for _, k in COLUMNS) + " |", flush=True)
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps(row) + "\n")


def setup(args) -> None:
    import torch
    from torch import nn

    from saelens_lite.circuits.replacement import replacement_forward
    from saelens_lite.circuits.trace import TraceConfig, trace

    lm, tcs = load(args)
    ids_S = lm.tokenizer(args.prompt, return_tensors="pt")["input_ids"][0][:args.tokens[0]]
    keep_S = torch.ones_like(ids_S, dtype=torch.bool)
    config = TraceConfig(max_feature_nodes=64, allow_missing_layers=args.allow_missing_layers)
    prompt = prompt_prefix(lm.tokenizer, args.prompt, args.tokens[0])
    trace(lm, tcs, prompt, config)  # warm-up
    walks, original = [0], nn.Module.named_modules

    def counting(self, memo=None, *rest, **kw):
        walks[0] += memo is None  # the recursion passes its memo: count the top-level calls only
        return original(self, memo, *rest, **kw)

    nn.Module.named_modules = counting
    try:
        replacement_forward(lm, tcs, ids_S, keep_S)
        n_walks = walks[0]
    finally:
        nn.Module.named_modules = original
    fw = []
    for _ in range(5):
        t = time.perf_counter()
        replacement_forward(lm, tcs, ids_S, keep_S)
        fw.append(time.perf_counter() - t)
    tr = [trace(lm, tcs, prompt, config).seconds for _ in range(3)]
    print(f"{len(ids_S)} tokens, {len(tcs.layers)} transcoders: {n_walks} module-tree walks per replacement "
          f"forward; replacement_forward min {min(fw):.3f} s, median {statistics.median(fw):.3f} s; trace "
          f"(--max-feature-nodes 64) min {min(tr):.2f} s, median {statistics.median(tr):.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("lengths", "setup", "child"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="smollm2-135m")
        p.add_argument("--transcoders", required=True, metavar="DIR")
        p.add_argument("--prompt", default=PROMPT, help="its first N tokens are traced")
        p.add_argument("--batch-size", type=int, default=32, help="targets per backward pass")
        p.add_argument("--allow-missing-layers", action="store_true")
        if name == "child":
            p.add_argument("--tokens", type=int, required=True)
            p.add_argument("--max-feature-nodes", default="all")
        else:
            p.add_argument("--tokens", type=int, nargs="+", default=[8, 16, 32] if name == "lengths" else [13])
        if name == "lengths":
            p.add_argument("--max-feature-nodes", nargs="+", default=["all"],
                           help="'all' (every active feature) and/or integers")
            p.add_argument("--timeout", type=float, default=900, help="seconds before a trace is killed")
            p.add_argument("--jsonl", default=None, help="append each row as JSON to this file")
            p.add_argument("--max-address-space-gb", type=float, default=None,
                           help="cap each trace's address space (RLIMIT_AS): past it the trace fails, "
                                "reported as such, instead of exhausting a shared machine's memory")
    args = ap.parse_args()
    {"lengths": lengths, "setup": setup, "child": child}[args.cmd](args)


if __name__ == "__main__":
    main()
