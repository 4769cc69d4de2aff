"""The probes of sparse probing (Kantamneni et al. 2025; SAEBench's sparse-probing eval), each an
L2-regularised logistic regression (sklearn) fitted on the training split and scored on the test
split:

* ``dense``: on the raw activations x (N, D) (the paper's baseline).
* ``k=K``: on the K latents with the largest |mean_{y=1} z_f - mean_{y=0} z_f| over the training
  split (SAEBench ``get_top_k_mean_diff_mask``; the test split never takes part in the choice).
* ``all``: on every latent z (N, F).

Every probe standardises its features with the training split's mean and std (a dead latent,
std 0, stays 0) and picks the inverse regularisation C from ``ProbeConfig.cs`` by stratified
cross-validated AUC (ties: log-likelihood) on the training split only (the paper sweeps C the same way), then refits
on the whole training split. Test AUC is the Mann-Whitney form of
:func:`saelens_lite.evals.probes.auroc` on the decision function; accuracy thresholds the
predicted probability at 1/2.

Shape legend: N examples, D hook width, F latents, K latents kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from saelens_lite.evals.probes import auroc
from saelens_lite.util.validate import check_ints


@dataclass
class ProbeConfig:
    """How each probe is fitted."""

    cs: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0])
    """Inverse L2 strengths C tried (sklearn LogisticRegression(C)); the best by cross-validated
    training AUC (ties: by log-likelihood) is refitted. One value: no cross-validation."""
    folds: int = 3
    """Stratified folds of the training split for choosing C."""
    max_iter: int = 2000
    """lbfgs iterations per fit."""

    def __post_init__(self) -> None:
        check_ints(self, ("folds",), minimum=2)
        check_ints(self, ("max_iter",), minimum=1)
        if not self.cs or any(not c > 0 for c in self.cs):
            raise ValueError(f"ProbeConfig.cs={self.cs!r}: give one or more numbers > 0")


def mean_diff_order(z_NF: np.ndarray, y_N: np.ndarray) -> np.ndarray:
    """Latent indices by |mean over y=1 - mean over y=0|, largest first (ties: lower index)."""
    z_NF, y_N = np.asarray(z_NF, np.float64), np.asarray(y_N)
    diff_F = np.abs(z_NF[y_N == 1].mean(0) - z_NF[y_N == 0].mean(0))
    return np.argsort(-diff_F, kind="stable")


@dataclass
class ProbeScore:
    """One probe's test scores."""

    auc: float
    """Test ROC AUC of the decision function."""
    accuracy: float
    """Test accuracy at probability 1/2."""
    c: float
    """The C chosen on the training split."""


def _standardise(train_NX: np.ndarray, test_NX: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu_X = train_NX.mean(0)
    sd_X = train_NX.std(0)
    sd_X = np.where(sd_X > 0, sd_X, 1.0)
    return (train_NX - mu_X) / sd_X, (test_NX - mu_X) / sd_X


def _fit(x_NX: np.ndarray, y_N: np.ndarray, c: float, max_iter: int):
    """LogisticRegression(C=c) fitted; a fit that stops at max_iter is kept (near-separable data
    drives the weights up slowly; the C grid's smaller values bound them)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, max_iter=max_iter).fit(x_NX, y_N)


def _choose_c(x_NX: np.ndarray, y_N: np.ndarray, cfg: ProbeConfig, seed: int) -> float:
    from sklearn.model_selection import StratifiedKFold

    if len(cfg.cs) == 1:
        return float(cfg.cs[0])
    folds = StratifiedKFold(n_splits=cfg.folds, shuffle=True, random_state=seed)
    auc_C, loglik_C = np.zeros(len(cfg.cs)), np.zeros(len(cfg.cs))
    for fit_idx, val_idx in folds.split(x_NX, y_N):
        y_val = y_N[val_idx]
        for j, c in enumerate(cfg.cs):
            clf = _fit(x_NX[fit_idx], y_N[fit_idx], c, cfg.max_iter)
            s_N = clf.decision_function(x_NX[val_idx])
            auc_C[j] += auroc(s_N[y_val == 1], s_N[y_val == 0])
            loglik_C[j] -= np.logaddexp(0.0, np.where(y_val == 1, -s_N, s_N)).mean()
    # ties in AUC (common when a latent separates the classes) go to the better log-likelihood:
    # the smallest C of a tie would keep AUC 1 but leave the probe's threshold on the prior
    best = np.lexsort((loglik_C, np.round(auc_C, 9)))[-1]
    return float(cfg.cs[int(best)])


def fit_probe(train_NX: np.ndarray, y_train: np.ndarray, test_NX: np.ndarray, y_test: np.ndarray,
              cfg: ProbeConfig | None = None, *, seed: int = 0) -> ProbeScore:
    """Fit one L2 logistic probe on (train_NX, y_train) and score it on (test_NX, y_test)."""
    cfg = cfg or ProbeConfig()
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    tr, te = _standardise(np.asarray(train_NX, np.float64), np.asarray(test_NX, np.float64))
    c = _choose_c(tr, y_train, cfg, seed)
    clf = _fit(tr, y_train, c, cfg.max_iter)
    s_N = clf.decision_function(te)
    return ProbeScore(auc=auroc(s_N[y_test == 1], s_N[y_test == 0]),
                      accuracy=float(((s_N > 0).astype(int) == y_test).mean()), c=c)


def sparse_probes(z_train_NF: np.ndarray, y_train: np.ndarray, z_test_NF: np.ndarray, y_test: np.ndarray,
                  ks: list[int], cfg: ProbeConfig | None = None, *, seed: int = 0,
                  with_all: bool = True) -> dict[str, ProbeScore | list[int]]:
    """{``k=K``: score for each K in ``ks``, ``all``: score on every latent, ``latents``: the
    max(ks) latents in the order chosen}. Latents chosen by :func:`mean_diff_order` on train."""
    F = z_train_NF.shape[1]
    bad = [k for k in ks if not 1 <= k <= F]
    if bad:
        raise ValueError(f"k={bad[0]} is outside 1..{F}, the number of latents")
    order_F = mean_diff_order(z_train_NF, y_train)
    out: dict[str, ProbeScore | list[int]] = {"latents": [int(i) for i in order_F[: max(ks)]]}
    for k in ks:
        top_K = order_F[:k]
        out[f"k={k}"] = fit_probe(z_train_NF[:, top_K], y_train, z_test_NF[:, top_K], y_test, cfg, seed=seed)
    if with_all:
        out["all"] = fit_probe(z_train_NF, y_train, z_test_NF, y_test, cfg, seed=seed)
    return out


__all__ = ["ProbeConfig", "ProbeScore", "mean_diff_order", "fit_probe", "sparse_probes"]
