"""Explanation throughput: features per minute, one feature at a time against batched, in one
process on one SAE and cache (the machine's load hits both alike: runs are interleaved).

Prints
  0. the statistics pass (one SAE pass over the cache, paid once per run before any feature);
  1. template explainer + embedding scorer (MiniLM): per feature (``explain`` then
     ``score`` for each) against batches of ``--batch`` features (``explain_many`` and one
     encoder call per batch: ``runner.score_batch``);
  2. the hf explainer (SmolLM2-135M-Instruct, greedy, 48 new tokens): ``complete`` per feature
     against ``complete_many`` (left-padded batches), and how many answers are identical;
  3. the detection scorer with SmolLM2 as judge (each explanation and its shuffled one on
     held-out and non-activating windows): ``score`` per feature against ``score_many``.
Each is the median of ``--repeats`` interleaved runs, in features per minute; the ratio is
batched / per-feature throughput.

Defaults read the demo's run (``make demo``): runs/demo/sae/blocks.9.hook_resid_post and
runs/demo/activations.

Usage: python scripts/bench_explain.py [--sae PATH] [--activations PATH] [--features 40]
       [--hf-features 8] [--judge-features 4] [--batch 8] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from saelens_lite.cache import ActivationCache
from saelens_lite.explain import ExampleSource, ExplainConfig
from saelens_lite.explain.chat import HFChat
from saelens_lite.explain.embedding import SentenceEncoder
from saelens_lite.explain.explainers import DEFAULT_HF_MODEL, ModelExplainer, TemplateExplainer
from saelens_lite.explain.runner import explain_batch, score_batch
from saelens_lite.explain.scorers import DetectionScorer, EmbeddingScorer
from saelens_lite.lm.load import load_model
from saelens_lite.saes import SAE


def _per_min(n: int, seconds: float) -> float:
    return 60.0 * n / seconds


def _interleaved(runs: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each named callable, run in turn ``repeats`` times."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _batches(items: list, size: int) -> list[list]:
    return [items[a:a + size] for a in range(0, len(items), size)]


def _report(title: str, n: int, secs: dict[str, float]) -> None:
    one, many = secs["per feature"], secs["batched"]
    print(f"{title}: {n} features, per feature {_per_min(n, one):.1f}/min, batched "
          f"{_per_min(n, many):.1f}/min, ratio {one / many:.2f}x")


def bench_template(examples, encoder, batch: int, repeats: int) -> None:
    expl, scorer = TemplateExplainer(), EmbeddingScorer(encoder)
    shuffled = [examples[(i + 1) % len(examples)] for i in range(len(examples))]

    def per_feature():
        for ex, other in zip(examples, shuffled):
            scorer.score([expl.explain(ex), expl.explain(other)], ex)

    def batched():
        for chunk in _batches(list(zip(examples, shuffled)), batch):
            texts = explain_batch(expl, [ex for ex, _ in chunk])
            others = explain_batch(expl, [o for _, o in chunk])
            score_batch([scorer], [(t, o, ex) for t, o, (ex, _) in zip(texts, others, chunk)])

    _report("template + embedding", len(examples),
            _interleaved({"per feature": per_feature, "batched": batched}, repeats))


def bench_hf(examples, chat: HFChat, batch: int, repeats: int) -> None:
    expl = ModelExplainer(chat, f"hf:{DEFAULT_HF_MODEL}")
    got: dict[str, list[str]] = {}

    def per_feature():
        got["one"] = [expl.explain(ex) for ex in examples]

    def batched():
        got["many"] = [t for chunk in _batches(examples, batch) for t in expl.explain_many(chunk)]

    secs = _interleaved({"per feature": per_feature, "batched": batched}, repeats)
    _report("hf:smollm2-135m explainer", len(examples), secs)
    same = sum(a == b for a, b in zip(got["one"], got["many"]))
    print(f"  identical answers batched and alone: {same}/{len(examples)}")


def bench_judge(examples, chat: HFChat, batch: int, repeats: int) -> None:
    expl, scorer = TemplateExplainer(), DetectionScorer(chat)
    texts = [expl.explain(ex) for ex in examples]
    items = [([t, texts[(i + 1) % len(texts)]], ex) for i, (t, ex) in enumerate(zip(texts, examples))]

    def per_feature():
        for it in items:
            scorer.score(*it)

    def batched():
        for chunk in _batches(items, batch):
            scorer.score_many(chunk)

    _report("detection scorer (smollm2-135m judge)", len(examples),
            _interleaved({"per feature": per_feature, "batched": batched}, repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", default="runs/demo/sae/blocks.9.hook_resid_post")
    ap.add_argument("--activations", default="runs/demo/activations")
    ap.add_argument("--features", type=int, default=40, help="alive features, template + embedding")
    ap.add_argument("--hf-features", type=int, default=8, help="features for the hf explainer (0: skip)")
    ap.add_argument("--judge-features", type=int, default=4, help="features for the judge (0: skip)")
    ap.add_argument("--batch", type=int, default=8, help="features per batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = ActivationCache(args.activations)
    sae = SAE.load(args.sae).eval()
    lm = load_model(cache.meta.get("model") or sae.cfg.model_name)
    t = time.perf_counter()
    with ExampleSource(sae, cache, lm, ExplainConfig(), progress=False) as src:
        print(f"statistics pass: {time.perf_counter() - t:.1f} s ({cache.n_tokens:,} cache rows, "
              f"{sae.cfg.d_sae:,} features, {len(src.alive):,} alive); torch threads "
              f"{torch.get_num_threads()}")
        alive = src.alive.tolist()
        n = max(args.features, args.hf_features, args.judge_features)
        examples = [src.examples(f) for f in alive[:n]]
    bench_template(examples[:args.features], SentenceEncoder(), args.batch, args.repeats)
    if args.hf_features or args.judge_features:
        chat = HFChat(DEFAULT_HF_MODEL, batch_size=args.batch)
        if args.hf_features:
            bench_hf(examples[:args.hf_features], chat, args.batch, max(1, args.repeats // 2))
        if args.judge_features:
            bench_judge(examples[:args.judge_features], chat, args.batch, max(1, args.repeats // 2))


if __name__ == "__main__":
    main()
