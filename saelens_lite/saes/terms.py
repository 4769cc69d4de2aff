"""Pieces every sparse architecture shares, written once: decoder normalisation, the geometric
median, FVU and the AuxK dead-latent loss (its autograd form for `training_forward`, and its
closed-form gradient for the fast step, training/fast_step.py).

Shape legend: B batch, D model width, F features, K selected latents per token, N tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, get_args

import torch
from torch import Tensor

from saelens_lite import kernels
from saelens_lite.saes.config import PARAM_DTYPES, ParamDtype, SAEConfig, check_numbers, invalid

if TYPE_CHECKING:
    from saelens_lite.saes.base import SAE


DecoderNorm = Literal["auto", "unit", "free"]
"""Whether a k-sparse SAE's decoder rows are kept at unit norm (AuxKConfig.decoder_norm)."""
DECODER_NORMS = get_args(DecoderNorm)


@dataclass
class AuxKConfig(SAEConfig):
    """The fields of the architectures that select latents by top-k and train with AuxK
    (TopKConfig, BatchTopKConfig)."""

    # saved before the decoder fields existed: unit-norm rows from a unit-norm start
    legacy_defaults: ClassVar[dict] = {"decoder_norm": "unit", "decoder_init_norm": 1.0}

    aux_coeff: float = 1 / 32
    """Weight of the AuxK dead-latent loss (Gao et al. 2024, App. B.1)."""
    aux_k: int | None = None
    """Dead latents used by AuxK; None means d_in // 2 (Gao et al. use 512 for D=768... ~D/2)."""
    decoder_norm: DecoderNorm = "auto"
    """unit: decoder rows kept at unit norm (the gradient's part along each row removed before
    a step, rows renormalised after it; Gao et al. 2024). free: rows free in norm, as in
    SAELens' TopK with rescale_acts_by_decoder_norm=False; latents are still chosen on the raw
    pre-activations, so a row's norm is a per-latent gain the selection does not see. auto:
    free for an SAE, unit for a transcoder (the free start was measured on SAEs only)."""
    decoder_init_norm: float | None = None
    """Norm of the decoder rows at init; the encoder starts as their transpose (so its columns
    have this norm too). None: 0.1 for free rows (SAELens' decoder_init_norm default, its
    "heuristic" start after Anthropic's April 2024 circuits update), 1 for unit rows. With
    unit rows the decoder is back at unit norm after the first step and only the encoder
    keeps a smaller start."""
    select_dtype: ParamDtype | None = None
    """Dtype of the no-grad matmul that only chooses the active latents (None: the parameter
    dtype). "bfloat16" is ~6x faster on CPUs with AMX and on GPUs; the kept values and all
    gradients stay in the parameter dtype, so only near-ties at the k-th place differ."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_numbers(self, ("aux_coeff",))
        if self.decoder_norm not in DECODER_NORMS:
            raise invalid("decoder_norm", self.decoder_norm, str(list(DECODER_NORMS)))
        if self.decoder_init_norm is not None:
            check_numbers(self, ("decoder_init_norm",), positive=True)
        if self.aux_k is not None and (not isinstance(self.aux_k, int) or self.aux_k < 1):
            raise invalid("aux_k", self.aux_k, "None or an integer >= 1")
        if self.select_dtype is not None and self.select_dtype not in PARAM_DTYPES:
            raise invalid("select_dtype", self.select_dtype, f"None or one of {list(PARAM_DTYPES)}")

    @property
    def free_decoder(self) -> bool:
        """Whether the decoder rows are free in norm (decoder_norm, auto resolved)."""
        return self.decoder_norm == "free" or (self.decoder_norm == "auto" and not self.target_hook)

    @property
    def decoder_start_norm(self) -> float:
        """The decoder rows' norm at init (decoder_init_norm, None resolved)."""
        if self.decoder_init_norm is not None:
            return self.decoder_init_norm
        return 0.1 if self.free_decoder else 1.0

    @property
    def torch_select_dtype(self) -> torch.dtype | None:
        return None if self.select_dtype is None else PARAM_DTYPES[self.select_dtype]


def geometric_median(x_ND: Tensor, *, n_iter: int = 100, tol: float = 1e-7) -> Tensor:
    """argmin_y sum_n ||x_n - y|| by Weiszfeld iterations (in float64, starting at the mean)."""
    x = x_ND.detach().to(torch.float64)
    y = x.mean(0)
    for _ in range(n_iter):
        w_N = 1.0 / (x - y).norm(dim=1).clamp_min(1e-12)
        y_new = (w_N[:, None] * x).sum(0) / w_N.sum()
        done = (y_new - y).norm() <= tol * (y.norm() + 1e-12)
        y = y_new
        if done:
            break
    return y.to(x_ND.dtype)


@torch.no_grad()
def unit_norm_rows_(W_FD: Tensor) -> None:
    W_FD.div_(torch.linalg.vector_norm(W_FD, dim=1, keepdim=True).clamp_min(1e-12))


@torch.no_grad()
def remove_parallel_grad_(W_FD: Tensor) -> None:
    """grad_f -= <grad_f, w_f> w_f / ||w_f||^2, so a step keeps ||w_f|| to first order.
    (vecdot/vector_norm/addcmul_: three passes over (F, D), no temporaries of that size.)"""
    if W_FD.grad is None:
        return
    coef_F = torch.linalg.vecdot(W_FD, W_FD.grad) / torch.linalg.vector_norm(
        W_FD, dim=1
    ).square().clamp_min(1e-24)
    W_FD.grad.addcmul_(W_FD, coef_F[:, None], value=-1)


def fvu(x_BD: Tensor, x_hat_BD: Tensor, mse: Tensor | None = None) -> Tensor:
    """sum ||x - x_hat||^2 / sum ||x - mean(x)||^2, x the reconstruction target; `mse` (per-token
    mean of the summed squared error) saves recomputing the numerator."""
    num = (x_hat_BD - x_BD).pow(2).sum() if mse is None else mse * x_BD.shape[0]
    return (num / (x_BD - x_BD.mean(0)).pow(2).sum().clamp_min(1e-12)).detach()


def aux_k_full(cfg) -> int:
    """k_aux before capping by the dead count: cfg.aux_k, or D/2 when None (Gao et al. 2024 use
    512 at D = 768)."""
    return cfg.aux_k or max(cfg.d_in // 2, 1)


def aux_k(sae: SAE, dead_mask_F: Tensor | None) -> tuple[int, float]:
    """(k_aux, scale) for AuxK: k_aux = min(cfg.aux_k or D/2, n_dead),
    scale = min(n_dead / (cfg.aux_k or D/2), 1)
    (fewer dead latents than k_aux give a proportionally smaller term); (0, 0) when none is dead.
    Reads n_dead on the host; `aux_scale` is the sync-free scale."""
    n_dead = 0 if dead_mask_F is None else int(dead_mask_F.sum())
    if n_dead == 0:
        return 0, 0.0
    k_full = aux_k_full(sae.cfg)
    return min(k_full, n_dead), min(n_dead / k_full, 1.0)


def aux_scale(cfg, dead_mask_F: Tensor, dtype: torch.dtype) -> Tensor:
    """0-dim min(n_dead / k_full, 1), as `aux_k`'s scale, without a host sync. The quotient is
    taken in float64 for float64 parameters (then it equals `aux_k`'s Python float exactly),
    else in float32 (MPS has no float64; bfloat16 could not hold n_dead exactly)."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return (dead_mask_F.sum().to(acc) / aux_k_full(cfg)).clamp(max=1.0).to(dtype)


def aux_weight(x_BD: Tensor) -> Tensor:
    """Weight that puts the normalised AuxK term in the units of the main loss.

    Gao et al. 2024 (and sparsify) minimise FVU + aux_coeff * L_aux, both terms normalised.
    Our main loss is the per-token squared error ||x - x_hat||^2 (summed over D), which is
    FVU * v with v = ||x - mean(x)||^2 / B the batch's total variance per token. Adding
    aux_coeff * v * L_aux therefore keeps the paper's balance between the two terms at any
    width D and input scale. Without v the AuxK term would be about D times weaker."""
    return (x_BD - x_BD.mean(0)).pow(2).sum().detach() / x_BD.shape[0]


def auxk_loss(
    sae: SAE,
    x_BD: Tensor,
    x_hat_BD: Tensor,
    aux_pre_BK: Tensor,
    aux_idx_BK: Tensor,
    scale: float,
    target_BD: Tensor | None = None,
) -> Tensor:
    """AuxK (Gao et al. 2024, App. B.1): the top k_aux pre-activations among dead latents
    reconstruct the residual e = y - x_hat (detached; y the target, x for an SAE), normalised by
    the residual's variance:
        L_aux = scale * ||e_hat - e||^2 / ||e - mean(e)||^2,
        e_hat = ReLU(TopK_aux(pre_dead)) @ W_dec.
    Gradients reach only the dead latents' encoder columns and decoder rows (sparse kernels)."""
    vals_BK = torch.relu(
        kernels.select_preacts(x_BD, sae.W_enc, sae.b_enc, sae.b_pre, aux_idx_BK, aux_pre_BK)
    )
    e_hat_BD = kernels.sparse_decode(aux_idx_BK, vals_BK, sae.W_dec)
    e_BD = ((x_BD if target_BD is None else target_BD) - x_hat_BD).detach()
    return auxk_error(e_hat_BD, e_BD, scale)


def auxk_error(e_hat_BD: Tensor, e_BD: Tensor, scale: float | Tensor) -> Tensor:
    """The normalised AuxK error  scale * ||e_hat - e||^2 / ||e - mean(e)||^2  (e detached)."""
    return (
        scale * (e_hat_BD - e_BD).pow(2).sum() / (e_BD - e_BD.mean(0)).pow(2).sum().clamp_min(1e-12)
    )


def auxk_error_and_grad(e_hat_BD: Tensor, e_BD: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """(`auxk_error`, its gradient in e_hat) in closed form, for steps without autograd:
        d/d e_hat  scale ||e_hat - e||^2 / s = 2 scale (e_hat - e) / s,  s = ||e - mean(e)||^2."""
    diff_BD = e_hat_BD - e_BD
    denom = (e_BD - e_BD.mean(0)).pow(2).sum().clamp_min(1e-12)
    return scale * diff_BD.pow(2).sum() / denom, diff_BD * (2 * scale / denom)
