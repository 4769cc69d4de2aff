"""The local judge's P(yes): the plain padded forward (``p_yes(..., fast=False)``) against the fast
path (LM head on the last position only, one cached prefix per run of prompts sharing token ids;
saelens_lite/explain/chat.py), interleaved in one process on the same prompts (the machine's load
hits both alike), median of ``--repeats``.

The prompts are the detection scorer's (or ``--scorer fuzzing``): for each of ``--features``
alive features of the demo run, its template explanation and the next feature's (the shuffled
control), each on the held-out and non-activating windows, sent ``--batch`` features at a time
as ``runner`` does. Prints the sizes (features, prompts, tokens, the shared prefixes found), each
path's features per minute, the ratio, and the largest |difference| in P(yes).

Defaults read the demo's run (``make demo``): runs/demo/sae/blocks.9.hook_resid_post and
runs/demo/activations.

Usage: python scripts/bench_judge.py [--sae PATH] [--activations PATH] [--features 4]
       [--batch 8] [--repeats 3] [--threads N] [--scorer detection|fuzzing]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from saelens_lite.cache import ActivationCache
from saelens_lite.explain import ExampleSource, ExplainConfig
from saelens_lite.explain.chat import HFChat, prefix_groups
from saelens_lite.explain.explainers import DEFAULT_HF_MODEL, TemplateExplainer
from saelens_lite.explain.prompts import judge_messages
from saelens_lite.explain.scorers import DetectionScorer, FuzzingScorer
from saelens_lite.lm.load import load_model
from saelens_lite.saes import SAE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", default="runs/demo/sae/blocks.9.hook_resid_post")
    ap.add_argument("--activations", default="runs/demo/activations")
    ap.add_argument("--features", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8, help="features per p_yes call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--scorer", choices=("detection", "fuzzing"), default="detection")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = ActivationCache(args.activations)
    sae = SAE.load(args.sae).eval()
    lm = load_model(cache.meta.get("model") or sae.cfg.model_name)
    with ExampleSource(sae, cache, lm, ExplainConfig(), progress=False) as src:
        examples = [src.examples(f) for f in src.alive.tolist()[:args.features]]
    chat = HFChat(DEFAULT_HF_MODEL, batch_size=8)
    scorer = (DetectionScorer if args.scorer == "detection" else FuzzingScorer)(chat)
    texts = [TemplateExplainer().explain(ex) for ex in examples]
    chunks: list[list] = []  # the prompts of each p_yes call, as JudgeScorer.score_many builds them
    for a in range(0, len(examples), args.batch):
        chunks.append([])
        for i in range(a, min(a + args.batch, len(examples))):
            pos, neg = scorer.items(examples[i])
            for e in (texts[i], texts[(i + 1) % len(texts)]):
                chunks[-1] += [judge_messages(scorer.template, e, t) for t in pos + neg]
    seqs = [[chat._ids(m) for m in c] for c in chunks]
    n_prompts = sum(map(len, seqs))
    n_tok = sum(len(s) for c in seqs for s in c)
    runs = [r for c in seqs for r in prefix_groups(c)]
    saved = sum((b - a - 1) * P for a, b, P in runs if P)
    print(f"{args.scorer} judge ({DEFAULT_HF_MODEL}), torch threads {torch.get_num_threads()}: "
          f"{len(examples)} features, {n_prompts} prompts in {len(chunks)} call(s), {n_tok:,} tokens "
          f"(mean {n_tok / n_prompts:.0f}/prompt); {sum(1 for r in runs if r[2])} cached prefixes "
          f"(mean {statistics.mean([r[2] for r in runs if r[2]] or [0]):.0f} tokens, "
          f"{sum(r[1] - r[0] for r in runs if r[2])} prompts), {saved:,} tokens not recomputed "
          f"({saved / n_tok:.0%})")

    got: dict[str, list[float]] = {}
    paths = {"plain": lambda: [p for c in chunks for p in chat.p_yes(c, fast=False)],
             "fast": lambda: [p for c in chunks for p in chat.p_yes(c)]}
    times: dict[str, list[float]] = {k: [] for k in paths}
    cpu: dict[str, list[float]] = {k: [] for k in paths}  # process CPU time: less load-sensitive
    for _ in range(args.repeats):
        for name, fn in paths.items():
            t, c = time.perf_counter(), time.process_time()
            got[name] = fn()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    sec = {k: statistics.median(v) for k, v in times.items()}
    csec = {k: statistics.median(v) for k, v in cpu.items()}
    for k in paths:
        print(f"  {k}: {sec[k]:.2f} s wall, {csec[k]:.2f} s CPU, medians of {args.repeats} "
              f"({60 * len(examples) / sec[k]:.2f} features/min; wall runs "
              f"{', '.join(f'{t:.2f}' for t in times[k])} s)")
    diff = max(abs(a - b) for a, b in zip(got["plain"], got["fast"]))
    print(f"  ratio plain / fast: {sec['plain'] / sec['fast']:.2f}x wall, "
          f"{csec['plain'] / csec['fast']:.2f}x CPU; max |dP(yes)| {diff:.1e}")


if __name__ == "__main__":
    main()
