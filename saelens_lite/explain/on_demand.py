"""Explain one feature when asked: the served dashboard's "Explain this feature" button.

``FeatureExplainer(sae, cache, lm).explain(f)`` gives the record ``explain()`` writes for ``f``
(same examples, explainer, scorers and record format: :mod:`saelens_lite.explain.runner`) with
one difference, the shuffled baseline: a batch run borrows its neighbour's explanation, here
the explanation of another alive feature drawn by ``(seed, f)`` is made with the same
explainer, so the baseline is as strong as the explanation it is compared with.

The statistics pass (one SAE pass over the cache, as in a batch run) runs at the first request;
records go to a :class:`~saelens_lite.explain.store.RecordStore` when ``out`` is given, so a
feature explained once is answered from the file afterwards, also after a restart.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from saelens_lite.explain.config import ExplainConfig
from saelens_lite.explain.examples import ExampleSource
from saelens_lite.explain.explainers import make_explainer
from saelens_lite.explain.runner import (
    build_scorers,
    explain_batch,
    judge_for,
    make_record,
    score_batch,
)
from saelens_lite.explain.scorers import parse_scorers
from saelens_lite.explain.store import RecordStore


class FeatureExplainer:
    """Explains features one request at a time; thread-safe (one lock around the work)."""

    def __init__(self, sae, cache, lm, *, explainer="template", scorers="embedding",
                 config: ExplainConfig | None = None, out=None, judge=None, hook: str | None = None,
                 openai_model: str | None = None, timeout: float = 60.0, retries: int = 3,
                 sae_path: str | None = None):
        self.sae, self.cache, self.lm, self.hook, self.sae_path = sae, cache, lm, hook, sae_path
        self.cfg = config or ExplainConfig()
        self.names = parse_scorers(scorers)
        opts = {"openai_model": openai_model, "timeout": timeout, "retries": retries}
        self.explainer = make_explainer(explainer, **opts) if isinstance(explainer, str) else explainer
        self.scorers = build_scorers(self.names, judge_for(judge, self.explainer, self.names, opts),
                                     self.cfg.seed)
        self.out = out
        self.store: RecordStore | None = None
        self._src: ExampleSource | None = None
        self.lock = threading.Lock()

    def info(self) -> dict:
        return {"explainer": self.explainer.spec, "scorers": self.names}

    def settings(self) -> dict:
        return {"sae": self.sae_path, "cache": str(self.cache.path.resolve()), "hook": self.hook,
                "explainer": self.explainer.spec, "scorers": self.names, "features": "on demand",
                "config": dataclasses.asdict(self.cfg)}

    def _source(self) -> ExampleSource:
        if self._src is None:
            self._src = ExampleSource(self.sae, self.cache, self.lm, self.cfg, hook=self.hook,
                                      progress=False)
            if self.out is not None:
                self.store = RecordStore(self.out, self.settings())
        return self._src

    def shuffled_feature(self, f: int) -> int | None:
        """Another alive feature, drawn by ``(seed, f)``; None when ``f`` is the only one."""
        others = self._source().alive
        others = others[others != f]
        if len(others) == 0:
            return None
        return int(others[np.random.default_rng([self.cfg.seed, f, 2]).integers(len(others))])

    def explain(self, f: int) -> dict:
        """The record of feature ``f`` (read from ``out`` when it was explained before)."""
        if not 0 <= f < self.sae.cfg.d_sae:
            raise ValueError(f"feature {f} is outside this SAE's {self.sae.cfg.d_sae} features")
        with self.lock:
            src = self._source()
            if self.store is not None and f in self.store.done:
                return next(r for r in self.store.records if r["feature"] == f)
            g = self.shuffled_feature(f)
            examples = [src.examples(f)] + ([src.examples(g)] if g is not None else [])
            texts = explain_batch(self.explainer, examples)
            other = texts[1] if g is not None else None
            scores = score_batch(self.scorers, [(texts[0], other, examples[0])])[0]
            record = make_record(examples[0], texts[0], self.explainer.spec, scores, other, g)
            if self.store is not None:
                self.store.append([record])
            return record

    def close(self) -> None:
        if self._src is not None:
            self._src.close()
            self._src = None


__all__ = ["FeatureExplainer"]
