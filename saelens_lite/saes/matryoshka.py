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

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from saelens_lite import kernels
from saelens_lite.saes.base import SparseOps, SparseRecon
from saelens_lite.saes.batchtopk import BatchTopKConfig, BatchTopKSAE
from saelens_lite.saes.config import invalid
from saelens_lite.saes.registry import register


@dataclass
class MatryoshkaConfig(BatchTopKConfig):
    """MatryoshkaSAE's config: BatchTopK's fields and the nested groups with their weights."""

    architecture: str = "matryoshka"
    """As SAEConfig.architecture."""
    matryoshka_groups: list[float] | None = None
    """Sizes of the nested groups of latents, in dictionary order; prefix m is groups 1..m and
    reconstructs the input on its own (Bussmann et al. 2025). Integers summing to d_sae, or
    fractions summing to 1 (prefix widths round(d_sae * cumulative fraction), as
    dictionary_learning's group_fractions). None: prefixes of width d_sae / 16, / 8, / 4, / 2
    and d_sae (each prefix doubles; fewer when d_sae < 16)."""
    matryoshka_weights: list[float] | None = None
    """Weight w_m of prefix m's squared error in the loss sum_m w_m ||x - x_hat_m||^2, one per
    group, each >= 0 (used as given, not renormalised). None: 1 / (number of groups) each, so
    the loss is the mean over prefixes and stays in BatchTopK's units."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.matryoshka_groups, self.matryoshka_weights = (
            None if v is None else list(v) for v in (self.matryoshka_groups, self.matryoshka_weights)
        )
        if self.d_sae:  # groups are checked against d_sae once the trainer sets it
            matryoshka_prefixes(self)  # validates both fields


def matryoshka_prefixes(cfg: MatryoshkaConfig) -> tuple[list[int], list[float]]:
    """(widths, weights): the prefix widths n_1 < ... < n_M = d_sae and the weights w_m of
    cfg.matryoshka_groups / matryoshka_weights (see their docs); ValueError naming the field
    otherwise."""
    F_, groups, field = cfg.d_sae, cfg.matryoshka_groups, "matryoshka_groups"
    sums = f"integers summing to d_sae={F_} or fractions summing to 1"
    if groups is None:
        widths = sorted({F_ >> j for j in range(5)} - {0})
    elif not groups or not all(_is_number(g) and g > 0 for g in groups):
        raise invalid(field, groups, "None or a non-empty list of numbers > 0")
    elif all(isinstance(g, int) for g in groups):
        if sum(groups) != F_:
            raise invalid(field, groups, sums)
        widths = [int(w) for w in itertools.accumulate(groups)]
    else:
        if not math.isclose(sum(groups), 1.0, rel_tol=0, abs_tol=1e-6):
            raise invalid(field, groups, sums)
        widths = [round(F_ * c) for c in itertools.accumulate(groups)][:-1] + [F_]
        if any(a >= b for a, b in zip([0, *widths], widths)):
            raise invalid(field, groups, f"fractions giving every group >= 1 of d_sae={F_} latents")
    weights = cfg.matryoshka_weights
    if weights is None:
        return widths, [1.0 / len(widths)] * len(widths)
    if (
        len(weights) != len(widths)
        or not all(_is_number(w) and w >= 0 and math.isfinite(w) for w in weights)
        or not sum(weights) > 0
    ):
        raise invalid("matryoshka_weights", weights, f"None or {len(widths)} numbers >= 0 (one "
                      f"per group of widths {widths}), not all 0")  # fmt: skip
    return widths, [float(w) for w in weights]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@register("matryoshka")
class MatryoshkaSAE(BatchTopKSAE):
    config_class = MatryoshkaConfig
    # the fast step: BatchTopK's selection, this class's reconstruction terms in closed form
    # (sparse_reconstruction); its backward="dense" has one decode, so not this loss
    supports_fast_step = True
    fast_step_dense_backward = False
    # every prefix reconstructs the target y (the input for an SAE) and keeps b_dec and the skip
    # term x @ W_skip (reconstruction_terms); oracle: tests/saes/test_saes_transcoder.py's float64
    # reference with prefixes
    supports_transcoder = True

    def __init__(self, cfg: MatryoshkaConfig):
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
        self, x_BD: Tensor, y_BD: Tensor, pattern: kernels.SparsePattern, vals_N: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(x_hat_M, sum_m w_m ||y - x_hat_m||^2, losses): "mse" is the full dictionary's error
        (FVU and logs), "prefix_mse_<n_m>" each prefix's before weighting. Every prefix keeps
        b_dec and a transcoder's skip term (y: the input x, or a transcoder's target)."""
        x_hat_BD = self.add_skip(x_BD, self.b_dec.expand_as(y_BD))
        loss = y_BD.new_zeros(())
        losses: dict[str, Tensor] = {}
        for width, w, d_BD in zip(self.widths, self.weights, self.group_decodes(pattern, vals_N)):
            x_hat_BD = x_hat_BD + d_BD
            mse = (x_hat_BD - y_BD).pow(2).sum(-1).mean()
            losses[f"prefix_mse_{width}"] = mse
            loss = loss + w * mse
        return x_hat_BD, loss, {"mse": mse} | losses

    def sparse_reconstruction(
        self, x_BD: Tensor, pattern: kernels.SparsePattern, vals_N: Tensor, ops: SparseOps
    ) -> SparseRecon:
        """The nested-prefix terms of the fast step in closed form (module docstring; Bussmann
        et al. 2025): with d_j the decode of group j's codes,
            x_hat_m = b_dec + d_1 + ... + d_m,   L = sum_m w_m ||x_hat_m - x||^2 / B,
            g_m = 2 w_m (x_hat_m - x) / B,   G_j = g_j + ... + g_M,
            dL/dz_n = <G_j(n)[b_n], W_dec[f_n]>,   dL/dW_dec = sum_n z_n e_{f_n} G_j(n)[b_n],
        and dL/db_dec's direct part sum_b G_1[b]. The entries are regrouped once (a stable sort
        by (group, row)) into a pattern of M*B rows, row j*B + b holding token b's codes of
        group j, so each product is one kernel over the N entries: one decode (d_j for all j,
        in the parameter dtype), one sampled dot and one transposed product against the
        (M*B, D) stack of G_j. Inactive entries (value 0; on Triton the sentinel column F)
        stay inert. No host sync. A transcoder's target and skip term are not read here (the
        fast step declines transcoders: fast_step_supports)."""
        B, F_, M = x_BD.shape[0], self.cfg.d_sae, len(self.widths)
        cols_N = pattern.cols_N.clamp(max=F_ - 1)  # the sentinel F (value 0): any real row
        group_N = sum((cols_N >= n).long() for n in self.widths[:-1])
        key_N = pattern.rows_N + B * group_N if M > 1 else pattern.rows_N
        order_N = torch.argsort(key_N, stable=True)
        rows_N, vals_o = key_N[order_N], vals_N[order_N]
        # the decode gathers real rows (embedding_bag); the kernels below skip the sentinel
        dec = kernels.SparsePattern.from_coo(rows_N, cols_N[order_N], M * B, F_)
        back = kernels.SparsePattern.from_coo(rows_N, pattern.cols_N[order_N], M * B, F_)
        d_MBD = dec.gather_rows_sum(vals_o, self.W_dec.detach()).view(M, B, -1)
        x_hat_MBD = d_MBD.cumsum(0) + self.b_dec.detach()
        err_MBD = x_hat_MBD - x_BD
        losses, loss, g = {}, x_BD.new_zeros(()), []
        for width, w, err_BD in zip(self.widths, self.weights, err_MBD):
            mse = err_BD.pow(2).sum() / B
            losses[f"prefix_mse_{width}"] = mse
            loss = loss + w * mse
            g.append(err_BD * (2.0 * w / B))
        G_MBD = torch.stack(g).flip(0).cumsum(0).flip(0)  # G_j = g_j + ... + g_M
        G_c = ops.cast(G_MBD.view(M * B, -1))
        gz_N = torch.empty_like(vals_N).index_copy_(
            0, order_N, back.sampled_dot(G_c, ops.W_dec).to(vals_N.dtype))
        gW_dec = back.transposed_matmul(vals_o, G_c, out_dtype=ops.out_dtype)
        return SparseRecon(x_hat_MBD[-1], loss, {"mse": mse} | losses, gz_N, G_MBD[0], gW_dec)
