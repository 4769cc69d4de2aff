"""The fixed split of one probing dataset and the changed training splits the probes are refitted
on (the paper's settings): balanced subsets of a given size (data scarcity), subsets with a given
share of positive texts (class imbalance) and flipped training labels (label noise), each with
``draws`` seeded draws. ``Split.dense`` / ``Split.sparse`` fit the probes of :mod:`.probes` on a
split's training rows and score them on its test rows.

Shape legend: N examples (the split's texts, training first), D hook width, F latents.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from saelens_lite.evals.probing.probes import ProbeConfig, fit_probe, sparse_probes

log = logging.getLogger(__name__)


def _score_row(score) -> dict:
    return {"auc": score.auc, "accuracy": score.accuracy, "C": score.c}


def positives(fraction: float, n: int) -> int:
    """ceil(fraction n), the positive texts of a class-imbalance draw of n (the count of
    ``sae_probes.utils_data.get_train_test_indices``; the 1e-9 keeps 0.1 * 30 at 3)."""
    return int(np.ceil(fraction * n - 1e-9))


@dataclass
class Split:
    """One dataset's fixed split; its texts are ordered train first, then test."""

    idx_N: np.ndarray
    n_train: int
    y_N: np.ndarray

    def counts(self, name: str, classes: tuple[str, str]) -> dict:
        y_tr, y_te = self.y_N[: self.n_train], self.y_N[self.n_train:]
        return {"dataset": name, "n_train": self.n_train, "n_test": len(y_te), "n_train_pos": int(y_tr.sum()),
                "n_test_pos": int(y_te.sum()), "classes": list(classes)}

    def subset(self, n: int, seed: int, draw: int = 0) -> np.ndarray:
        """Positions (into this split's rows) of a balanced draw of ``n`` training texts, n // 2
        positive, sorted, then every test text. Draw 0 is the one a single-draw run makes."""
        rng = np.random.default_rng([seed, n] + ([draw] if draw else []))
        pos, neg = self._by_label()
        n_pos = max(min(n // 2, len(pos)), n - len(neg))  # half each, as far as the smaller label allows
        return self._with_test(rng.choice(pos, n_pos, replace=False), rng.choice(neg, n - n_pos, replace=False))

    def imbalance_size(self, fractions: list[float]) -> int:
        """The largest training size every fraction f of positive texts can be drawn at: ceil(f n)
        positive and n - ceil(f n) negative texts both within the training split."""
        pos, neg = self._by_label()
        return int(min(min(len(pos) / f, len(neg) / (1 - f)) for f in fractions) + 1e-9)

    def imbalanced(self, n: int, fraction: float, seed: int, draw: int = 0) -> np.ndarray:
        """As :meth:`subset`, with ceil(fraction n) of the ``n`` training texts positive
        (``sae_probes.utils_data.get_train_test_indices``' count)."""
        rng = np.random.default_rng([seed, 1, n, round(fraction * 1e6), draw])
        pos, neg = self._by_label()
        n_pos = positives(fraction, n)
        return self._with_test(rng.choice(pos, n_pos, replace=False), rng.choice(neg, n - n_pos, replace=False))

    def noisy_labels(self, fraction: float, seed: int, draw: int = 0) -> np.ndarray:
        """This split's labels with int(fraction n_train) seeded training labels flipped (as
        ``sae_probes.utils_data.corrupt_ytrain``); the test labels unchanged."""
        rng = np.random.default_rng([seed, 2, round(fraction * 1e6), draw])
        y_N = self.y_N.copy()
        flip = rng.choice(self.n_train, int(fraction * self.n_train + 1e-9), replace=False)
        y_N[flip] = 1 - y_N[flip]
        return y_N

    def _by_label(self) -> tuple[np.ndarray, np.ndarray]:
        y_tr = self.y_N[: self.n_train]
        return np.flatnonzero(y_tr == 1), np.flatnonzero(y_tr == 0)

    def _with_test(self, *train: np.ndarray) -> np.ndarray:
        return np.concatenate([np.sort(np.concatenate(train)), np.arange(self.n_train, len(self.y_N))])

    def dense(self, x_ND: np.ndarray, probe_cfg: ProbeConfig, seed: int) -> dict:
        n = self.n_train
        return _score_row(fit_probe(x_ND[:n], self.y_N[:n], x_ND[n:], self.y_N[n:], probe_cfg, seed=seed))

    def sparse(self, z_NF: np.ndarray, cfg, probe_cfg: ProbeConfig) -> dict:
        n = self.n_train
        res = sparse_probes(z_NF[:n], self.y_N[:n], z_NF[n:], self.y_N[n:], cfg.ks, probe_cfg, seed=cfg.seed,
                            with_all=cfg.all_latents)
        return {name: (v if name == "latents" else _score_row(v)) for name, v in res.items()}


@dataclass
class Variant:
    """One refit of every probe on a changed training split (the test split is the same): the
    split's rows at ``pick`` (training texts, then every test text) with labels ``y_N`` (None:
    the split's own); its rows carry ``fields``, its result files end in ``tag``."""

    fields: dict
    tag: str
    pick: np.ndarray
    n_train: int
    y_N: np.ndarray | None = None


def variants(cfg, split: Split, min_class: int) -> dict[str, list[Variant]]:
    """Of a ``run.ProbingConfig`` ``cfg`` (train_sizes, pos_fractions, label_noise, draws, seed):
    {result key: its variants}: ``scarce_rows`` (each training size below the split,
    balanced), ``imbalance_rows`` (each fraction of positive texts, at the size all of them
    allow), ``noise_rows`` (each fraction of flipped training labels), ``cfg.draws`` draws each.
    A class-imbalance draw whose smaller class would have fewer than ``min_class`` texts (the
    cross-validation folds) is left out."""
    out: dict[str, list[Variant]] = {"scarce_rows": [], "imbalance_rows": [], "noise_rows": []}
    draws, seed = range(cfg.draws), cfg.seed
    for n in sorted(set(cfg.train_sizes)):
        if n < split.n_train:
            out["scarce_rows"] += [Variant({"train_size": n, "draw": r}, f"n{n}s{seed}" + (f"d{r}" if r else ""),
                                            split.subset(n, seed, r), n) for r in draws]
    fractions = sorted(set(cfg.pos_fractions))
    if fractions:
        n = split.imbalance_size(fractions)
        for f in fractions:
            if min(positives(f, n), n - positives(f, n)) < min_class:
                log.warning("class fraction %g: %d training texts leave fewer than %d of one class; skipped",
                            f, n, min_class)
                continue
            out["imbalance_rows"] += [Variant({"pos_fraction": f, "draw": r}, f"p{f:g}n{n}s{seed}d{r}",
                                               split.imbalanced(n, f, seed, r), n) for r in draws]
    every = np.arange(len(split.y_N))
    for f in sorted(set(cfg.label_noise)):
        out["noise_rows"] += [Variant({"label_noise": f, "draw": r, "n_flipped": int(f * split.n_train + 1e-9)},
                                       f"e{f:g}s{seed}d{r}", every, split.n_train, split.noisy_labels(f, seed, r))
                              for r in draws]
    return out


__all__ = ["Split", "Variant", "variants", "positives"]
