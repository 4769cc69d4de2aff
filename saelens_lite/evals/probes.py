"""Sparse probes, selectivity and ROC curves of latent codes: the interpretability proxies and
anomaly-detection scores shared by ``saelens_lite.compare`` and its plots.

Shape legend: N examples, F latents.
"""

from __future__ import annotations

import numpy as np


def auroc(scores_pos, scores_neg) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) + P(tie) / 2 (Mann-Whitney U / n+ n-)."""
    from scipy.stats import rankdata

    pos, neg = np.asarray(scores_pos, np.float64), np.asarray(scores_neg, np.float64)
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def roc_curve(scores_pos, scores_neg) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) over every threshold, from (0, 0) to (1, 1)."""
    s = np.concatenate([scores_pos, scores_neg])
    lab = np.concatenate([np.ones(len(scores_pos)), np.zeros(len(scores_neg))])
    o = np.argsort(-s, kind="stable")
    s, lab = s[o], lab[o]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each run of equal scores
    tp, fp = np.cumsum(lab)[last], np.cumsum(1 - lab)[last]
    return np.r_[0, fp / max(fp[-1], 1)], np.r_[0, tp / max(tp[-1], 1)]


def selectivity(z_NF: np.ndarray, y_N: np.ndarray) -> float:
    """Mean over live latents of the largest share of |activation| mass on one label."""
    a = np.abs(z_NF.astype(np.float64))
    labels, inv = np.unique(y_N, return_inverse=True)
    mass_CF = np.zeros((len(labels), a.shape[1]))
    np.add.at(mass_CF, inv, a)
    tot_F = mass_CF.sum(0)
    live = tot_F > 0
    return float((mass_CF[:, live].max(0) / tot_F[live]).mean()) if live.any() else float("nan")


def sparse_probe_accuracy(z_NF: np.ndarray, y_N: np.ndarray, *, k: int = 4, n_classes: int = 10,
                          seed: int = 0) -> float:
    """Balanced accuracy of one-vs-rest logistic probes on the k latents with the largest
    |mean_in - mean_out| / std (chosen and fitted on one half, scored on the other), averaged over
    the ``n_classes`` most frequent labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y_N))
    a, b = perm[: len(perm) // 2], perm[len(perm) // 2:]
    labels, counts = np.unique(y_N, return_counts=True)
    accs = []
    for c in labels[np.argsort(-counts)][:n_classes]:
        yy = y_N == c
        if yy[a].sum() < 2 or (~yy[a]).sum() < 2 or yy[b].sum() < 1:
            continue
        za = z_NF[a]
        score = np.abs(za[yy[a]].mean(0) - za[~yy[a]].mean(0)) / (za.std(0) + 1e-8)
        top = np.argsort(-score)[:k]
        clf = LogisticRegression(class_weight="balanced", max_iter=500).fit(za[:, top], yy[a])
        accs.append(balanced_accuracy_score(yy[b], clf.predict(z_NF[b][:, top])))
    return float(np.mean(accs)) if accs else float("nan")

__all__ = ["auroc", "roc_curve", "selectivity", "sparse_probe_accuracy"]
