"""SynthSAEBench scores of an SAE against the true features (Chanin & Garriga-Alonso 2026,
arXiv 2602.14687, Sec. 4; the definitions of SAELens' ``sae_lens.synthetic.evals``).

Shape legend: N samples, B batch, D width, G true features, F SAE latents.

With A_FG = |cos(W_dec_f, W_true_g)| (decoder rows against true directions):

* MCC: the mean of A over a one-to-one matching of min(F, G) latents to features that
  maximises the sum (the Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``);
  O'Neill et al. 2025, "Position: Mechanistic Interpretability Should Prioritize Feature
  Consistency in SAEs". 1: every latent is a true feature.
* uniqueness: #{argmax_g A_fg over f} / F, the fraction of latents whose best feature no other
  latent shares (a duplicated latent costs 1 / F).
* per-latent precision, recall, F1, accuracy: latent f as a detector of its best feature
  g(f) = argmax_g A_fg ("fires" = activation != 0, "on" = coefficient > 0) on held-out samples,
  TP_f = #(f fires and g(f) on), ...; precision = TP / (TP + FP), recall = TP / (TP + FN),
  F1 = 2 P R / (P + R), each 0 where undefined, then averaged over all F latents (a dead latent
  scores 0).
* explained variance: 1 - sum_n |x_n - x_hat_n|^2 / sum_n |x_n - mean x|^2 (float64 sums).
* L0 (mean latents firing per sample), the true L0, dead latents (never fired on the held-out
  samples), shrinkage (mean over samples with |x| > 1e-6 of |x_hat| / |x|).
"""

from __future__ import annotations

import torch
from torch import Tensor


def abs_cosines(W_dec_FD: Tensor, W_true_GD: Tensor) -> Tensor:
    """(F, G) |cos| between decoder rows and true directions (float32; zero rows give 0)."""
    if W_dec_FD.dim() != 2 or W_dec_FD.shape[1] != W_true_GD.shape[1]:
        raise ValueError(f"decoder of shape {tuple(W_dec_FD.shape)}: must be (F, D={W_true_GD.shape[1]}), "
                         "one direction per latent in the model's width")
    a = W_dec_FD.float() / W_dec_FD.float().norm(dim=1, keepdim=True).clamp_min(1e-8)
    b = W_true_GD.float() / W_true_GD.float().norm(dim=1, keepdim=True).clamp_min(1e-8)
    return (a @ b.T).abs()


def mcc(A_FG: Tensor) -> float:
    """Mean |cos| over the maximum-weight one-to-one matching (module docstring)."""
    from scipy.optimize import linear_sum_assignment

    A = A_FG.double().numpy()
    r, c = linear_sum_assignment(A, maximize=True)
    return float(A[r, c].mean())


def uniqueness(A_FG: Tensor) -> float:
    """Distinct best features over latents / F."""
    return len(torch.unique(A_FG.argmax(1))) / A_FG.shape[0]


class ScoreAccumulator:
    """Sums over held-out batches for the sample-based scores of the module docstring."""

    def __init__(self, best_F: Tensor, d: int):
        F = len(best_F)
        self.best_F = best_F
        self.n = 0
        self.l0 = self.true_l0 = 0.0
        self.fired_F = torch.zeros(F, dtype=torch.bool)
        self.tp_F, self.fp_F, self.fn_F = (torch.zeros(F, dtype=torch.float64) for _ in range(3))
        self.sum_x_D = torch.zeros(d, dtype=torch.float64)
        self.sq_norm = self.sq_resid = 0.0
        self.shrink, self.shrink_n = 0.0, 0

    def update(self, x_BD: Tensor, x_hat_BD: Tensor, acts_BF: Tensor, on_BG: Tensor) -> None:
        fires_BF = acts_BF != 0
        gt_BF = on_BG[:, self.best_F]
        self.n += len(x_BD)
        self.l0 += float(fires_BF.sum())
        self.true_l0 += float(on_BG.sum())
        self.fired_F |= fires_BF.any(0)
        f, g = fires_BF.double(), gt_BF.double()
        tp = (f * g).sum(0)
        self.tp_F += tp
        self.fp_F += f.sum(0) - tp
        self.fn_F += g.sum(0) - tp
        x, xh = x_BD.double(), x_hat_BD.double()
        self.sum_x_D += x.sum(0)
        self.sq_norm += float((x * x).sum())
        self.sq_resid += float(((x - xh) ** 2).sum())
        nx = x.norm(dim=1)
        ok = nx > 1e-6
        self.shrink += float((xh.norm(dim=1)[ok] / nx[ok]).sum())
        self.shrink_n += int(ok.sum())

    def result(self) -> dict[str, float]:
        tp, fp, fn = self.tp_F, self.fp_F, self.fn_F
        p = torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1), 0.0)
        r = torch.where(tp + fn > 0, tp / (tp + fn).clamp_min(1), 0.0)
        f1 = torch.where(p + r > 0, 2 * p * r / (p + r).clamp_min(1e-300), 0.0)
        acc = 1 - (fp + fn) / max(self.n, 1)
        var = self.sq_norm - float((self.sum_x_D**2).sum()) / max(self.n, 1)
        return {"f1": float(f1.mean()), "precision": float(p.mean()), "recall": float(r.mean()),
                "accuracy": float(acc.mean()),
                "explained_variance": 1 - self.sq_resid / var if var > 0 else float("nan"),
                "l0": self.l0 / max(self.n, 1), "true_l0": self.true_l0 / max(self.n, 1),
                "dead_latents": int((~self.fired_F).sum()),
                "shrinkage": self.shrink / max(self.shrink_n, 1)}


@torch.no_grad()
def score_sae(sae, model, *, n_eval: int = 100_000, seed: int = 0, batch_size: int = 4096) -> dict:
    """Every score of the module docstring for ``sae`` on ``n_eval`` held-out samples of
    ``model`` (a ``model.SynthSAEModel``; the held-out stream, never a training batch)."""
    from saelens_lite.evals.synthsae.model import HELDOUT_STREAM

    W_dec = sae.W_dec.detach().float().cpu()
    A_FG = abs_cosines(W_dec, model.W_true_GD)
    acc = ScoreAccumulator(A_FG.argmax(1), model.cfg.d)
    dev = sae.W_dec.device  # samples are drawn on the CPU; a GPU-trained SAE encodes on its device
    for x_BD, c in model.iter_batches(n_eval, batch_size, stream=HELDOUT_STREAM, seed=seed):
        acts_BF = sae.encode(x_BD.to(dev))
        acc.update(x_BD, sae.decode(acts_BF).float().cpu(), acts_BF.float().cpu(), c.on())
    return {"mcc": mcc(A_FG), "uniqueness": uniqueness(A_FG)} | acc.result() | {
        "heldout_samples": n_eval, "heldout_seed": seed}


__all__ = ["abs_cosines", "mcc", "uniqueness", "ScoreAccumulator", "score_sae"]
