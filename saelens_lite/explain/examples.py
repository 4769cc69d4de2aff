"""A feature's examples for explaining and scoring, read from the feature statistics.

Shapes: N cache rows (tokens), F features, T top examples, Q quantile buckets, S samples per
bucket, W window tokens, L boosted tokens.

The statistics come from :func:`saelens_lite.features.stats.compute_feature_stats` (one
streaming pass of the SAE over the cache: top activations, quantile samples, the code table for
per-token activations) and :func:`saelens_lite.features.logits.logit_effects`; nothing is
re-derived here. The split, per feature:

* ``explain``: the strongest top activations, one per packed context, ``n_explain`` of them;
* ``heldout``: quantile samples, strongest bucket first and round-robin over buckets (delphi
  scores on quantiles so weak activations count too), then the remaining top activations;
* ``nonactivating``: random windows where the feature is zero on every token.

Each packed context (``cache.context_ids``) is used at most once across the three sets, so a
held-out window never overlaps a window the explainer saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from saelens_lite.explain.config import ExplainConfig
from saelens_lite.features.examples import TokenStrings, example_windows
from saelens_lite.features.logits import logit_effects
from saelens_lite.features.stats import StatsConfig, compute_feature_stats


@dataclass
class Context:
    """One window of text around an example token, with the feature's activation per token."""

    row: int
    """Cache row of the example token (its id in the records)."""
    context: int
    """Packed context (``cache.context_ids[row]``) the window lies in."""
    tokens: list[str]
    acts: list[float]
    centre: int
    """Index of the example token in ``tokens``."""

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def active(self) -> list[int]:
        """Indices of the tokens where the feature fires."""
        return [i for i, a in enumerate(self.acts) if a > 0]


@dataclass
class FeatureExamples:
    feature: int
    density: float
    """Fraction of cache tokens where the feature is > 0."""
    max_act: float
    explain: list[Context]
    heldout: list[Context]
    nonactivating: list[Context]
    boosted: list[str] = field(default_factory=list)
    """Tokens whose logits the decoder direction raises most (empty without an LM head)."""

    def rows(self) -> dict[str, list[int]]:
        return {"explain": [c.row for c in self.explain], "heldout": [c.row for c in self.heldout],
                "nonactivating": [c.row for c in self.nonactivating]}


class ExampleSource:
    """Statistics of every feature (computed once, at construction) and each feature's examples
    on demand. Call :meth:`close` (or use ``with``) to delete the temporary code table."""

    def __init__(self, sae, cache, lm, cfg: ExplainConfig, *, hook: str | None = None,
                 progress: bool = True):
        self.cache, self.cfg = cache, cfg
        scfg = StatsConfig(hook=hook, n_top=cfg.n_top, n_quantiles=cfg.n_quantiles,
                           n_per_quantile=cfg.n_per_quantile, n_bins=1, batch_size=cfg.encode_batch_size,
                           seed=cfg.seed)
        self.stats, self.table = compute_feature_stats(sae, cache, scfg, progress=progress)
        self.context_N = np.asarray(cache.context_ids)
        self.strings = TokenStrings(lm.tokenizer)
        self.boosted_FL = None
        try:
            if cfg.n_logits:
                effects = logit_effects(sae.W_dec.detach(), lm, cfg.n_logits)
                if not isinstance(effects, str):  # a str says why there are none (no LM head)
                    self.boosted_FL = effects.pos_ids_FL
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> ExampleSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.table.delete()

    @property
    def alive(self) -> np.ndarray:
        """Features that fire at least once in the cache."""
        return np.flatnonzero(self.stats.count_F > 0)

    def examples(self, f: int) -> FeatureExamples:
        s, cfg = self.stats, self.cfg
        top_T = s.top_rows_FT[f][s.top_rows_FT[f] >= 0]
        quant = s.quant_rows_FQS[f][::-1].T.reshape(-1)  # sample-major, strongest bucket first
        used: set[int] = set()
        explain = self._take(top_T, cfg.n_explain, used)
        heldout = self._take(np.concatenate([quant[quant >= 0], top_T]), cfg.n_heldout, used)
        nonact = self._take(self._zero_rows(f, used), cfg.n_nonactivating, used)
        boosted = []
        if self.boosted_FL is not None:
            names = self.strings(self.boosted_FL[f])
            boosted = [names[int(i)] for i in self.boosted_FL[f]]
        ctx = lambda rows: self._contexts(f, np.asarray(rows, np.int64))  # noqa: E731
        return FeatureExamples(f, float(s.density_F[f]), float(s.max_F[f]), ctx(explain),
                               ctx(heldout), ctx(nonact), boosted)

    def _take(self, rows: np.ndarray, n: int, used: set[int]) -> list[int]:
        """The first ``n`` rows whose packed context is not in ``used`` (which they join)."""
        out = []
        for r in rows.tolist():
            c = int(self.context_N[r])
            if c not in used:
                used.add(c)
                out.append(r)
                if len(out) == n:
                    break
        return out

    def _zero_rows(self, f: int, used: set[int]) -> np.ndarray:
        """Random rows (seeded per feature) whose whole window has feature ``f`` at zero."""
        rng = np.random.default_rng([self.cfg.seed, f])
        N, want = len(self.context_N), self.cfg.n_nonactivating
        found = []
        for _ in range(4):  # a dense feature needs more draws; give up after four rounds
            rows = rng.integers(0, N, size=8 * want)
            rows = rows[~np.isin(self.context_N[rows], list(used))]
            _, acts_XW, valid_XW = example_windows(self.table, self.cache, rows, np.full(len(rows), f),
                                                   self.cfg.window_before, self.cfg.window_after)
            found.append(rows[(acts_XW <= 0).all(1) & valid_XW.any(1)])
            if sum(map(len, found)) >= 2 * want:
                break
        return np.concatenate(found)

    def _contexts(self, f: int, rows: np.ndarray) -> list[Context]:
        if len(rows) == 0:
            return []
        before, after = self.cfg.window_before, self.cfg.window_after
        tok_XW, acts_XW, valid_XW = example_windows(self.table, self.cache, rows, np.full(len(rows), f),
                                                    before, after)
        names = self.strings(tok_XW[valid_XW])
        out = []
        for r, tok, act, ok in zip(rows.tolist(), tok_XW, acts_XW, valid_XW):
            keep = np.flatnonzero(ok)
            out.append(Context(r, int(self.context_N[r]), [names[int(t)] for t in tok[keep]],
                               [round(float(a), 4) for a in act[keep]], before - int(keep[0])))
        return out


__all__ = ["Context", "FeatureExamples", "ExampleSource"]
