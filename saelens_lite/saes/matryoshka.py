"""Matryoshka BatchTopK SAE (Bussmann et al. 2025, "Learning Multi-Level Features with
Matryoshka Sparse Autoencoders"; Nabeshima 2024, "Matryoshka Sparse Autoencoders").

The dictionary is cut into nested prefixes of widths n_1 < ... < n_M = F
(cfg.matryoshka_groups), and every prefix must reconstruct the input on its own:

    z = BatchTopK(pre)  over the whole dictionary (saes.batchtopk: selection, threshold,
                        relative score, AuxK and the inference threshold are BatchTopK's),
    x_hat_m = sum_{f < n_m} z_f W_dec_f + b_dec,
    L = sum_m w_m ||x - x_hat_m||^2  (per token, mean over the batch)
        + aux_coeff * v * L_aux(x - x_hat_M)                    (w_m: cfg.matryoshka_weights)

so the first latents are pushed to carry the broad features (a parent direction cannot be
absorbed into a child latent that lives in a later group: the earlier prefix would lose it).
AuxK reads the residual of the full reconstruction, as dictionary_learning's
MatryoshkaBatchTopKTrainer and SAELens' default do. Inference is BatchTopK's: the whole
dictionary with the calibrated threshold, acts = pre * (pre / r(x) > theta), so a saved
Matryoshka SAE is a BatchTopK SAE (and exports as JumpReLU where BatchTopK does).

Gradient of the reconstruction terms (the fast path's closed form): with
g_m = 2 w_m (x_hat_m - x) / B, latent f of group j (n_{j-1} <= f < n_j) sees
    dL/dz_bf = <G_j[b], W_dec_f>,   G_j = sum_{m >= j} g_m,
    dL/dW_dec_f = sum_b z_bf G_j[b],  dL/db_dec = sum_m sum_b g_m[b] - W_enc @ dL/db_enc,
a reverse cumulative sum over the groups of one decode per group.

Shape legend: B batch, D width, F latents, N kept (row, latent) pairs, M prefixes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelens_lite import kernels
from saelens_lite.saes.base import SAEConfig, matryoshka_prefixes
from saelens_lite.saes.batchtopk import BatchTopKSAE
from saelens_lite.saes.registry import register


@register("matryoshka")
class MatryoshkaSAE(BatchTopKSAE):
    # the fast step's closed-form gradients are BatchTopK's single reconstruction; not this loss
    supports_fast_step = False

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.widths, self.weights = matryoshka_prefixes(cfg)

    def group_decodes(self, pattern: kernels.SparsePattern, vals_N: Tensor) -> list[Tensor]:
        """[d_1, ..., d_M]: d_j = sum over the kept codes of group j (n_{j-1} <= f < n_j) of
        z_f W_dec_f, (B, D) each, one sparse decode per group; x_hat_m = b_dec + d_1 + ... + d_m."""
        bounds_M = torch.tensor(self.widths, device=pattern.cols_N.device)
        group_N = torch.bucketize(pattern.cols_N, bounds_M, right=True)
        out = []
        for j in range(len(self.widths)):
            keep_N = group_N == j
            sub = kernels.SparsePattern.from_coo(
                pattern.rows_N[keep_N], pattern.cols_N[keep_N], pattern.n_rows, pattern.n_cols
            )
            out.append(kernels.sparse_decode(sub, vals_N[keep_N], self.W_dec))
        return out

    def reconstruction_terms(
        self, x_BD: Tensor, pattern: kernels.SparsePattern, vals_N: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(x_hat_M, sum_m w_m ||x - x_hat_m||^2, losses): "mse" is the full dictionary's error
        (FVU and logs), "prefix_mse_<n_m>" each prefix's before weighting."""
        x_hat_BD = self.b_dec.expand_as(x_BD)
        loss = x_BD.new_zeros(())
        losses: dict[str, Tensor] = {}
        for width, w, d_BD in zip(self.widths, self.weights, self.group_decodes(pattern, vals_N)):
            x_hat_BD = x_hat_BD + d_BD
            mse = (x_hat_BD - x_BD).pow(2).sum(-1).mean()
            losses[f"prefix_mse_{width}"] = mse
            loss = loss + w * mse
        return x_hat_BD, loss, {"mse": mse} | losses
