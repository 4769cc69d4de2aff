"""``explain(sae, cache, out)``: explain and score features in resumable batches.

Phases: set-up (check every choice, load the explainer, judge and encoder: a bad value or an
unreachable endpoint fails here, before anything is written), statistics (one SAE pass over the
cache, :class:`~saelens_lite.explain.examples.ExampleSource`), then per batch of features:
examples -> explanations -> scores of each explanation and of a shuffled one -> one fsync'd
append. The shuffled explanation of a batch's i-th feature is the (i+1)-th's (a rotation); a
batch of one borrows the previous record's. Records hold no timings, so a resumed run's file is
byte-identical to an uninterrupted one's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from saelens_lite.explain.chat import HFChat
from saelens_lite.explain.config import ExplainConfig
from saelens_lite.explain.embedding import SentenceEncoder
from saelens_lite.explain.examples import ExampleSource, FeatureExamples
from saelens_lite.explain.explainers import DEFAULT_HF_MODEL, make_explainer
from saelens_lite.explain.scorers import SCORERS, parse_scorers
from saelens_lite.explain.select import parse_features
from saelens_lite.explain.store import RecordStore

log = logging.getLogger(__name__)


def judge_for(judge, explainer, names: list[str], opts: dict):
    """The chat model of the detection / fuzzing scorers: ``judge`` (a spec or a chat object),
    else the explainer's model, else the built-in default; None when no scorer needs one."""
    if not any(SCORERS[n].needs_judge for n in names):
        return None
    if judge is None:
        return explainer.chat if explainer.chat is not None else HFChat(DEFAULT_HF_MODEL)
    if isinstance(judge, str):
        chat = make_explainer(judge, **opts).chat
        if chat is None:
            raise ValueError(f"--judge {judge!r} is not a model; use hf:NAME_OR_PATH or openai:URL")
        return chat
    return judge


def build_scorers(names: list[str], judge, seed: int) -> list:
    out = []
    for n in names:
        cls = SCORERS[n]
        out.append(cls(judge, seed) if cls.needs_judge else cls(SentenceEncoder()))
    return out


def explain_batch(explainer, examples: list[FeatureExamples]) -> list[str]:
    """The explainer's texts for a batch (one batched model call when it has ``explain_many``)."""
    many = getattr(explainer, "explain_many", None)
    return many(examples) if many is not None else [explainer.explain(ex) for ex in examples]


def score_batch(scorers, items: list[tuple[str, str | None, FeatureExamples]]) -> list[dict]:
    """Per (explanation, shuffled explanation or None, examples): ``{scorer: {metric, shuffled_
    metric, n_pos, n_neg}}``; each scorer scores the whole batch in one call."""
    out: list[dict] = [{} for _ in items]
    for sc in scorers:
        got = sc.score_many([([t] + ([o] if o is not None else []), ex) for t, o, ex in items])
        for scores, g, (_, _, ex) in zip(out, got, items):
            entry = dict(g[0])
            for k, v in (g[1] if len(g) > 1 else dict.fromkeys(g[0])).items():
                entry[f"shuffled_{k}"] = v
            entry.update(n_pos=len(ex.heldout), n_neg=len(ex.nonactivating))
            scores[sc.name] = entry
    return out


def make_record(ex: FeatureExamples, text: str, spec: str, scores: dict, other: str | None,
                other_f: int | None) -> dict:
    """One line of ``explanations.jsonl`` (the record: docs/explanations.md)."""
    return {"feature": ex.feature, "explanation": text, "explainer": spec, "scores": scores,
            "shuffled": {"feature": other_f, "explanation": other},
            "density": round(ex.density, 8), "max_act": round(ex.max_act, 4), "examples": ex.rows()}


def _batch_records(src, explainer, scorers, feats: list[int], prev: dict | None) -> list[dict]:
    examples = [src.examples(f) for f in feats]
    texts = explain_batch(explainer, examples)
    shuffled = []
    for i in range(len(feats)):
        if len(feats) > 1:
            j = (i + 1) % len(feats)
            shuffled.append((texts[j], feats[j]))
        else:
            shuffled.append((prev["explanation"], prev["feature"]) if prev else (None, None))
    scores = score_batch(scorers, [(t, o, ex) for t, (o, _), ex in zip(texts, shuffled, examples)])
    return [make_record(ex, t, explainer.spec, sc, o, of)
            for ex, t, sc, (o, of) in zip(examples, texts, scores, shuffled)]


def explain(sae, cache, out, *, explainer="template", scorers="embedding", features=None,
            config: ExplainConfig | None = None, judge=None, model=None, hook: str | None = None,
            openai_model: str | None = None, timeout: float = 60.0, retries: int = 3,
            progress: bool = True, timings: dict | None = None) -> Path:
    """Explain ``features`` of ``sae`` (an SAE or its folder) from ``cache`` (an ActivationCache
    or its folder) and score them; returns the path of ``out/explanations.jsonl``. Rerunning
    with the same arguments skips the features already done.

    ``explainer``: ``"template"``, ``"hf:NAME_OR_PATH"``, ``"openai:URL"`` (with
    ``openai_model``) or an object with ``spec``, ``chat`` and ``explain(FeatureExamples)``;
    ``scorers``: names among :data:`~saelens_lite.explain.scorers.SCORERS` (comma-separated or a
    list; "none"); ``features``: see :mod:`saelens_lite.explain.select`; ``judge``: the model
    of the detection / fuzzing scorers (default: the explainer's, else hf:smollm2-135m);
    ``model``: the language model for token strings and logit effects (default: the cache's)."""
    from saelens_lite.cache import ActivationCache
    from saelens_lite.lm.load import LoadedModel, load_model
    from saelens_lite.saes import SAE
    from saelens_lite.saes.base import require_sparse_coder

    cfg = config or ExplainConfig()
    names = parse_scorers(scorers)
    pick = parse_features(features)
    opts = {"openai_model": openai_model, "timeout": timeout, "retries": retries}
    expl = make_explainer(explainer, **opts) if isinstance(explainer, str) else explainer
    judge_chat = judge_for(judge, expl, names, opts)
    sae_path = str(Path(sae).resolve()) if isinstance(sae, (str, os.PathLike)) else None
    cache = ActivationCache(cache) if isinstance(cache, (str, os.PathLike)) else cache
    sae = (SAE.load(sae) if sae_path else sae).eval()
    require_sparse_coder(sae, "explaining features")
    if not isinstance(model, LoadedModel):
        name = model or cache.meta.get("model") or sae.cfg.model_name
        if not name:
            raise ValueError("the cache's meta names no model; pass model=")
        model = load_model(name)
    scorer_objs = build_scorers(names, judge_chat, cfg.seed)
    settings = {"sae": sae_path, "cache": str(cache.path.resolve()), "hook": hook, "explainer": expl.spec,
                "judge": getattr(judge_chat, "name", None), "scorers": names,
                "features": features if features is None or isinstance(features, str) else list(features),
                "config": dataclasses.asdict(cfg)}
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    with ExampleSource(sae, cache, model, cfg, hook=hook, progress=progress) as src:
        timings["stats_s"] = time.perf_counter() - t0
        feats = pick(src.stats.count_F)
        store = RecordStore(out, settings)  # the first write, after every check
        todo = [f for f in feats if f not in store.done]
        t1 = time.perf_counter()
        bar = tqdm(total=len(feats), initial=len(feats) - len(todo), unit="feat", desc="explain",
                   disable=not progress, dynamic_ncols=True)
        for a in range(0, len(feats), cfg.batch_features):
            batch = [f for f in feats[a:a + cfg.batch_features] if f not in store.done]
            if batch:
                prev = store.records[-1] if store.records else None
                store.append(_batch_records(src, expl, scorer_objs, batch, prev))
                bar.update(len(batch))
        bar.close()
    timings.update(explain_s=time.perf_counter() - t1, n_features=len(todo))
    log.info("%d features explained (%d skipped as done) into %s in %.1f s", len(todo),
             len(feats) - len(todo), store.path, timings["explain_s"])
    return store.path


def summarize(records: list[dict]) -> dict[str, dict[str, float]]:
    """Mean of every score over the records that have it: {scorer: {metric: mean}}."""
    out: dict[str, dict[str, float]] = {}
    for name in sorted({n for r in records for n in r["scores"]}):
        metrics = sorted({k for r in records for k in r["scores"].get(name, {})} - {"n_pos", "n_neg"})
        out[name] = {}
        for m in metrics:
            vals = [r["scores"][name][m] for r in records
                    if name in r["scores"] and r["scores"][name].get(m) is not None]
            out[name][m] = float(np.mean(vals)) if vals else float("nan")
            out[name][f"n_{m}"] = len(vals)
    return out


__all__ = ["explain", "summarize", "judge_for", "build_scorers", "explain_batch", "score_batch",
           "make_record"]
