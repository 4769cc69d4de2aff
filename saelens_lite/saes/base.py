"""Shared SAE base: config, train output, parameters, save/load, and the pieces every
architecture uses once (decoder normalisation, geometric median, AuxK loss).

Shape legend: B batch, D model width (d_in), F features (d_sae), K active features per token,
N tokens used for initialisation.

Every architecture computes   pre_BF = (x_BD - b_dec) @ W_enc + b_enc,
acts_BF = activation(pre_BF),  x_hat_BD = acts_BF @ W_dec + b_dec.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from saelens_lite import kernels
from saelens_lite.saes.registry import REGISTRY, architectures, get_sae_class

FORMAT_VERSION = 1
_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_B_DEC_INITS = ("geometric_median", "mean", "zeros")


def _invalid(field: str, value, allowed: str) -> ValueError:
    return ValueError(f"SAEConfig.{field}={value!r} is invalid; allowed: {allowed}")


@dataclass
class SAEConfig:
    architecture: str = "topk"
    """Registered architecture name (see saelens_lite.saes.REGISTRY)."""
    d_in: int = 768
    """Model width D: size of the activations the SAE reads."""
    d_sae: int = 24576
    """Number of latents F."""
    k: int = 32
    """Active latents per token for topk (exact) and batchtopk (on average over the batch);
    the target L0 of jumprelu."""
    l1_coeff: float = 5.0
    """relu: weight of sum_i |f_i| ||W_dec_i|| (Anthropic, April 2024 update, lambda=5 with
    inputs scaled so E||x|| = sqrt(D))."""
    l0_coeff: float = 20.0
    """jumprelu: weight lambda of the sparsity term: lambda * (e^2 + nu e), e = L0 / k - 1, with
    jumprelu_target_l0 (nu: see jumprelu_l0_adapt), else lambda * L0 (Rajamanoharan et al.
    2024)."""
    jumprelu_target_l0: bool = True
    """jumprelu: penalise (L0 / k - 1)^2, so k is the target L0 (dictionary_learning's
    JumpReluTrainer, target_l0), instead of the paper's lambda * L0, whose L0 depends on lambda,
    the data and the run length. Thresholds start where each latent fires on a fraction k / F
    of the init sample (init_from_data_), so training starts near L0 = k either way."""
    jumprelu_l0_adapt: float = 0.05
    """jumprelu with jumprelu_target_l0: step size of the multiplier that makes L0 settle at k.
    The quadratic penalty alone balances the reconstruction's pull above k (L0 ~ 1.5 k in short
    runs on real activations); with a rate > 0 the sparsity term is the augmented Lagrangian
    of the constraint e = L0 / k - 1 = 0 (method of multipliers, Hestenes 1969, Powell 1969):
        lambda * (e^2 + nu_t e),   nu_{t+1} = nu_t + rate * 2 s_t e_t   (nu_0 = 0)
    after each optimizer step (s_t: the sparsity warm-up scale, 1 after it), so nu grows until
    the pull is cancelled at e = 0."""
    aux_coeff: float = 1 / 32
    """topk/batchtopk: weight of the AuxK dead-latent loss (Gao et al. 2024, App. B.1)."""
    aux_k: int | None = None
    """Dead latents used by AuxK; None means d_in // 2 (Gao et al. use 512 for D=768... ~D/2)."""
    multi_topk: bool = False
    """topk: add the Multi-TopK term L(4k) / 8 (Gao et al. 2024) so the SAE works at other k."""
    multi_topk_coeff: float = 1 / 8
    """Weight of the 4k reconstruction term when multi_topk is on."""
    threshold_momentum: float = 0.99
    """batchtopk: EMA momentum of the inference threshold (min positive kept activation)."""
    relative_threshold: bool = True
    """batchtopk: rank pre-activations, and threshold them at inference, in units of each
    token's RMS r(x) = ||x - b_dec|| / sqrt(D): keep the batch's top B*k of pre / r, infer
    pre * (pre > theta * r). Bussmann et al. 2024 trained BatchTopK on activations standardised
    token by token (bartbussmann/BatchTopK main.py, input_unit_norm=True), where a batch-wide
    threshold is this rule. On raw pre-activations interference grows with ||x||, so
    high-norm tokens take most of the B*k slots with false positives and latents that are
    still learning never reach the threshold (ground-truth benchmark: 47% of the features
    recovered, against 97% with this rule and 99% for TopK). False: the threshold on raw
    pre-activations, a plain JumpReLU (what SAEConfigs saved without this field load as)."""
    jumprelu_bandwidth: float = 1.0
    """jumprelu: width epsilon of the rectangle kernel in the straight-through estimator.
    With inputs scaled to E||x|| = sqrt(D) pre-activations are O(1), so eps of that order
    (SAELens' settings after Anthropic's JumpReLU recipe use 2) puts a few percent in the window:
    0.05 (SAELens' default) gave ~0.05% there on the synthetic benchmark, too few threshold
    gradients for a short run (12.5% of the features recovered there, 35% with eps = 2)."""
    jumprelu_init_threshold: float = 0.001
    """jumprelu: initial threshold theta (stored as log theta) before init_from_data_, and the
    floor of the data-based thresholds it sets."""
    jumprelu_threshold_lr_scale: float = 10.0
    """jumprelu: learning rate of log theta relative to the other parameters. Adam moves each
    parameter by ~lr a step: an encoder weight of size ~1/sqrt(D) by ~lr sqrt(D) relative,
    log theta by only lr relative, so with one lr the thresholds lag the pre-activation scale
    by ~sqrt(D) (a short run then ends with L0 far from its target)."""
    jumprelu_pre_act_coeff: float = 1e-3
    """jumprelu: weight of the pre-activation loss sum_i dead_i ReLU(theta_i - pre_i) that
    pulls latents that have stopped firing back to their thresholds (Anthropic's
    pre-activation loss, restricted to dead latents as SAELens' calculate_pre_act_loss does);
    0 turns it off. Adam normalises the dead latents' gradients, so its size matters little."""
    jumprelu_pre_grad: bool = True
    """jumprelu: the straight-through estimators also give pre-activations a gradient, the
    kernel-smoothed derivative in pre that mirrors the one in theta (H depends on pre - theta):
    d JumpReLU / d pre := H + (theta / eps) K, d H / d pre := (1 / eps) K. Anthropic's January
    2025 update lets the STE's gradient reach all parameters, not only the thresholds. Latents
    just below threshold then learn from the reconstruction (and the L0 penalty) instead of
    only from the pre-activation loss; on the synthetic benchmark (3 seeds) recovery rose from
    64% to 93% and FVU fell from 0.32 to 0.26 at the same L0. False: Rajamanoharan et al.
    2024 (no such gradient; pre-activations learn only where the latent fires)."""
    b_dec_init: str = "geometric_median"
    """How init_from_data_ sets b_dec: geometric_median (Weiszfeld), mean or zeros."""
    hook_name: str = ""
    """Hook point the SAE was trained on (informational); a transcoder's input."""
    target_hook: str = ""
    """Empty: an SAE (it reconstructs its input). Set: a transcoder, which reads hook_name and
    reconstructs the activations at this hook (Dunefsky et al. 2024, "Transcoders find
    interpretable LLM feature circuits"); its encoder does not subtract b_dec, which lives in
    the target space. Only for the sparse architectures."""
    skip: bool = False
    """Transcoders only: a learned linear skip connection, x_hat = decode(acts) + x @ W_skip with
    W_skip (D, D) initialised to zero (Paulo et al. 2025, "Transcoders beat sparse autoencoders
    for interpretability")."""
    model_name: str = ""
    """Model the activations came from (informational)."""
    dtype: str = "float32"
    """Parameter dtype: float32, float64, bfloat16 or float16."""
    select_dtype: str | None = None
    """topk/batchtopk: dtype of the no-grad matmul that only chooses the active latents (None:
    the parameter dtype). "bfloat16" is ~6x faster on CPUs with AMX and on GPUs; the kept values
    and all gradients stay in the parameter dtype, so only near-ties at the k-th place differ."""
    # -- baselines (saelens_lite.saes.baselines); the sparse architectures ignore these fields
    noise_std: float = 0.2
    """denoising: std of the Gaussian noise added to each input coordinate, in the units the
    model sees (the trainer scales inputs so E||x|| = sqrt(D): a coordinate's RMS is ~1)."""
    mask_prob: float = 0.0
    """denoising: probability that an input coordinate is zeroed (masking noise, Vincent et
    al. 2008)."""
    vae_beta: float = 1.0
    """vae: weight of the KL term (beta-VAE, Higgins et al. 2017); 1 gives the ELBO."""
    conv_kind: str = "1d"
    """conv: "1d" (causal convolutions over the token sequence, input (B, S, D)) or "2d"
    (images, input (B, 1, H, W) or flattened (B, H*W) with H = W = sqrt(d_in))."""
    conv_channels: int = 32
    """conv: channels of the hidden layer between input and latents (0: no hidden layer)."""
    conv_kernel: int = 3
    """conv: kernel size (odd)."""
    format_version: int = FORMAT_VERSION
    """Version of the saved folder format (cfg.json + sae.safetensors)."""

    def __post_init__(self) -> None:
        if self.architecture not in REGISTRY:
            raise _invalid("architecture", self.architecture, str(architectures()))
        for name in ("d_in", "d_sae"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise _invalid(name, v, "an integer >= 1")
        if (
            not isinstance(self.k, int)
            or self.k < 1
            or (REGISTRY[self.architecture].uses_k and self.k > self.d_sae)
        ):
            raise _invalid("k", self.k, f"an integer in [1, d_sae={self.d_sae}]")
        for name in (
            "l1_coeff",
            "l0_coeff",
            "aux_coeff",
            "multi_topk_coeff",
            "jumprelu_pre_act_coeff",
            "jumprelu_l0_adapt",
        ):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not v >= 0 or math.isinf(v):
                raise _invalid(name, v, "a finite number >= 0")
        if self.aux_k is not None and (not isinstance(self.aux_k, int) or self.aux_k < 1):
            raise _invalid("aux_k", self.aux_k, "None or an integer >= 1")
        if not 0.0 <= self.threshold_momentum < 1.0:
            raise _invalid("threshold_momentum", self.threshold_momentum, "a number in [0, 1)")
        if not isinstance(self.relative_threshold, bool):
            raise _invalid("relative_threshold", self.relative_threshold, "True or False")
        if not isinstance(self.jumprelu_pre_grad, bool):
            raise _invalid("jumprelu_pre_grad", self.jumprelu_pre_grad, "True or False")
        for name in (
            "jumprelu_bandwidth",
            "jumprelu_init_threshold",
            "jumprelu_threshold_lr_scale",
        ):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not v > 0 or math.isinf(v):
                raise _invalid(name, v, "a finite number > 0")
        if not isinstance(self.target_hook, str):
            raise _invalid("target_hook", self.target_hook, "a hook name, or '' for an SAE")
        if not isinstance(self.skip, bool) or (self.skip and not self.target_hook):
            raise _invalid("skip", self.skip, "True or False; True only with target_hook set")
        if self.b_dec_init not in _B_DEC_INITS:
            raise _invalid("b_dec_init", self.b_dec_init, str(list(_B_DEC_INITS)))
        if self.dtype not in _DTYPES:
            raise _invalid("dtype", self.dtype, str(list(_DTYPES)))
        if self.select_dtype is not None and self.select_dtype not in _DTYPES:
            raise _invalid("select_dtype", self.select_dtype, f"None or one of {list(_DTYPES)}")
        for name in ("noise_std", "vae_beta"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not v >= 0 or math.isinf(v):
                raise _invalid(name, v, "a finite number >= 0")
        if not isinstance(self.mask_prob, (int, float)) or not 0.0 <= self.mask_prob < 1.0:
            raise _invalid("mask_prob", self.mask_prob, "a number in [0, 1)")
        if self.conv_kind not in ("1d", "2d"):
            raise _invalid("conv_kind", self.conv_kind, "'1d' or '2d'")
        if not isinstance(self.conv_channels, int) or self.conv_channels < 0:
            raise _invalid("conv_channels", self.conv_channels, "an integer >= 0")
        if not isinstance(self.conv_kernel, int) or self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise _invalid("conv_kernel", self.conv_kernel, "an odd integer >= 1")
        if (
            not isinstance(self.format_version, int)
            or not 1 <= self.format_version <= FORMAT_VERSION
        ):
            raise _invalid(
                "format_version", self.format_version, f"an integer in [1, {FORMAT_VERSION}]"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    @property
    def torch_select_dtype(self) -> torch.dtype | None:
        return None if self.select_dtype is None else _DTYPES[self.select_dtype]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SAEConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"SAEConfig got unknown fields {unknown}; allowed: {sorted(known)}")
        # saved before relative_threshold existed: those SAEs threshold raw pre-activations
        return cls(**({"relative_threshold": False} | d))


class TrainOutput(NamedTuple):
    loss: Tensor
    """Scalar to minimise: reconstruction + weighted sparsity/auxiliary terms."""
    x_hat_BD: Tensor
    """Reconstruction of the batch."""
    fired_F: Tensor
    """bool (F,): latents with a positive activation in this batch (dead-latent tracking)."""
    l0: Tensor
    """0-dim detached float: mean number of active latents per token."""
    fvu: Tensor
    """0-dim detached float: fraction of variance unexplained,
    sum ||x - x_hat||^2 / sum ||x - mean(x)||^2."""
    losses: dict[str, Tensor]
    """Named loss terms before weighting (mse, l1, l0, auxk, multi_topk_mse) and training
    statistics (JumpReLU's l0_multiplier), for logging."""


# ---------------------------------------------------------------- shared pieces
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


def aux_k(sae: SAE, dead_mask_F: Tensor | None) -> tuple[int, float]:
    """(k_aux, scale) for AuxK: k_aux = min(cfg.aux_k or D/2, n_dead),
    scale = min(n_dead / (cfg.aux_k or D/2), 1)
    (fewer dead latents than k_aux give a proportionally smaller term); (0, 0) when none is dead."""
    n_dead = 0 if dead_mask_F is None else int(dead_mask_F.sum())
    if n_dead == 0:
        return 0, 0.0
    k_full = sae.cfg.aux_k or max(sae.cfg.d_in // 2, 1)
    return min(k_full, n_dead), min(n_dead / k_full, 1.0)


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
    return (
        scale * (e_hat_BD - e_BD).pow(2).sum() / (e_BD - e_BD.mean(0)).pow(2).sum().clamp_min(1e-12)
    )


# ---------------------------------------------------------------- the base class
class SAE(nn.Module):
    """Sparse autoencoder with raw parameters W_enc (D, F), b_enc (F,), W_dec (F, D), b_dec (D,).

    Subclasses (one per architecture, registered by name) define `encode` and
    `training_forward`; `unit_norm_decoder` says whether decoder rows are kept at unit norm.
    Init: W_dec rows random unit directions, W_enc = W_dec^T (Gao et al. 2024), b_enc = b_dec = 0.
    W_enc is column-major (W_enc.T is contiguous); any layout works, this one is fastest.
    """

    architecture: str = ""
    unit_norm_decoder: bool = True
    uses_k: bool = False  # whether cfg.k matters (then it must be <= d_sae)
    # whether the trainer's default lr takes the short-run factor (training.config.default_lr);
    # only where it was measured to help: TopK, BatchTopK, JumpReLU (not L1 ReLU: 74% dead)
    short_run_lr: bool = False
    # False for models that are not one (D, F) linear map per token (the conv baseline: its
    # (B, S, D) input is a sequence); tests of the token-wise SAE contract skip them.
    tokenwise: bool = True
    # Whether cfg.target_hook may be set (a transcoder: input and target differ); the sparse
    # architectures, whose training_forward takes target_BD.
    supports_transcoder: bool = False
    # Whether training/fast_step.py's closed-form sparse gradients cover this architecture (for
    # the SAEConfig fields that `fast_step_supports` accepts); the trainer and TrainConfig read it.
    supports_fast_step: bool = False
    # Whether top-k selection runs over the whole batch (B*K codes per batch, not K per token)
    # with a threshold for inference (BatchTopK); the fast step selects accordingly.
    batch_selection: bool = False
    # Data-parallel training: the mean over ranks of a per-rank batch statistic, without grad
    # (the trainer sets saelens_lite.distributed.batch_mean under torchrun). None: one process,
    # the local batch is the whole batch. Terms non-linear in a batch mean read it (jumprelu).
    batch_mean = None

    @classmethod
    def fast_step_supports(cls, options: Mapping[str, object]) -> bool:
        """Whether the fast step trains this architecture with these SAEConfig fields (not a
        transcoder: the fast step reconstructs the input)."""
        return cls.supports_fast_step and not options.get("target_hook")

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        D, F_, dt = cfg.d_in, cfg.d_sae, cfg.torch_dtype
        W_dec = torch.randn(F_, D, dtype=torch.float32)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec.to(dt))
        # (D, F) as the contract says, stored as the transpose of a contiguous (F, D) tensor:
        # each latent's encoder column is contiguous, so the sparse backward writes whole rows
        # and the gradient already has the parameter's layout (no copy in AccumulateGrad).
        self.W_enc = nn.Parameter(W_dec.clone().to(dt).T)
        self.b_enc = nn.Parameter(torch.zeros(F_, dtype=dt))
        self.b_dec = nn.Parameter(torch.zeros(D, dtype=dt))
        if cfg.target_hook and not self.supports_transcoder:
            raise ValueError(f"SAEConfig.target_hook={cfg.target_hook!r} is invalid for "
                             f"architecture {cfg.architecture!r}; allowed: '' (transcoders: "
                             f"{sorted(n for n, c in REGISTRY.items() if c.supports_transcoder)})")
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(D, D, dtype=dt))

    @property
    def is_transcoder(self) -> bool:
        """Whether the target is another hook's activations (cfg.target_hook), not the input."""
        return bool(self.cfg.target_hook)

    @property
    def b_pre(self) -> Tensor:
        """What the encoder subtracts from its input: b_dec for an SAE, zero for a transcoder
        (whose b_dec is in the target space)."""
        return torch.zeros_like(self.b_dec) if self.is_transcoder else self.b_dec

    def add_skip(self, x_BD: Tensor, dec_BD: Tensor) -> Tensor:
        """dec + x @ W_skip with cfg.skip (a transcoder's linear skip connection), else dec."""
        if not self.cfg.skip:
            return dec_BD
        return dec_BD + x_BD.to(self.W_skip.dtype) @ self.W_skip

    # -- inference
    def pre_acts(self, x_BD: Tensor) -> Tensor:
        """(x - b_pre) @ W_enc + b_enc for any leading shape (..., D) -> (..., F)."""
        x2_BD = x_BD.reshape(-1, x_BD.shape[-1]).to(self.W_enc.dtype)
        return kernels.dense_preacts(x2_BD, self.W_enc, self.b_enc, self.b_pre).view(
            *x_BD.shape[:-1], -1
        )

    def encode(self, x_BD: Tensor) -> Tensor:
        raise NotImplementedError

    def encode_sparse(self, x_BD: Tensor) -> tuple[Tensor, Tensor]:
        """(vals_BK, idx_BK) with K = the largest number of active latents in any row."""
        acts_BF = self.encode(x_BD)
        k = max(int((acts_BF != 0).sum(-1).max()), 1) if acts_BF.numel() else 1
        return acts_BF.topk(k, dim=-1)

    def decode(self, acts_BF: Tensor) -> Tensor:
        """acts @ W_dec + b_dec. A transcoder with cfg.skip adds x @ W_skip, which needs the
        input: `forward(x)` (or `add_skip(x, decode(acts))`) is its full reconstruction."""
        return acts_BF @ self.W_dec + self.b_dec

    def forward(self, x_BD: Tensor) -> Tensor:
        """The reconstruction of the target (the input for an SAE), skip term included."""
        return self.add_skip(x_BD, self.decode(self.encode(x_BD)))

    # -- training
    def training_forward(
        self,
        x_BD: Tensor,
        *,
        target_BD: Tensor | None = None,
        sparsity_scale: float = 1.0,
        dead_mask_F: Tensor | None = None,
    ) -> TrainOutput:
        """Loss and statistics of a batch; the loss reconstructs target_BD (default x_BD; a
        transcoder's target hook) and FVU and mse are against it."""
        raise NotImplementedError

    def _output(
        self, y_BD, x_hat_BD, fired_F, l0, losses: dict[str, Tensor], loss: Tensor
    ) -> TrainOutput:
        """y_BD: the reconstruction target."""
        return TrainOutput(
            loss,
            x_hat_BD,
            fired_F,
            torch.as_tensor(l0, dtype=torch.float32).detach(),
            fvu(y_BD, x_hat_BD, losses.get("mse")),
            losses,
        )

    def lr_scales(self) -> dict[str, float]:
        """Learning rate multipliers of named parameters (the others get 1); the trainer gives
        each its own Adam parameter group."""
        return {}

    def before_optimizer_step_(self) -> None:
        if self.unit_norm_decoder:
            remove_parallel_grad_(self.W_dec)

    def after_optimizer_step_(self) -> None:
        if self.unit_norm_decoder:
            unit_norm_rows_(self.W_dec.data)

    def training_state(self) -> dict[str, Tensor]:
        """Training-only state outside the parameters (the trainer's checkpoints carry it, the
        saved SAE does not): nothing here; JumpReLU's adaptive sparsity weight."""
        return {}

    @torch.no_grad()
    def load_training_state_(self, state: dict[str, Tensor]) -> None:
        mine = self.training_state()
        for name, t in state.items():
            if name not in mine:
                raise ValueError(f"{self.architecture} SAE has no training state {name!r}; "
                                 f"it has {sorted(mine)}")  # fmt: skip
            mine[name].copy_(t)

    @torch.no_grad()
    def init_from_data_(self, x_ND: Tensor, target_ND: Tensor | None = None) -> None:
        """Set b_dec from a data sample per cfg.b_dec_init (geometric median: Gao et al. 2024):
        a sample of the target (target_ND; x_ND when None, as for an SAE)."""
        x = (x_ND if target_ND is None else target_ND).to(self.b_dec.device, torch.float32)
        if self.cfg.b_dec_init == "geometric_median":
            self.b_dec.copy_(geometric_median(x))
        elif self.cfg.b_dec_init == "mean":
            self.b_dec.copy_(x.mean(0))

    @torch.no_grad()
    def finish_training_(self, x_ND: Tensor) -> None:
        """Called by the trainer once the last step has run, with a sample of training inputs
        (in training units, before fold_input_scale_): set what inference needs from data.
        Nothing here; BatchTopK calibrates its threshold."""

    @torch.no_grad()
    def fold_input_scale_(self, scale: float, target_scale: float | None = None) -> None:
        """Make an SAE trained on c*x work on raw x: pre-activations (and so activations and
        thresholds) stay the same, the reconstruction is divided by c:
            (x - b_dec/c) @ (c W_enc) = (c x - b_dec) @ W_enc,
            x_hat' = acts (W_dec / c) + b_dec / c = x_hat(c x) / c.
        A transcoder trained on (c_in x, c_out y) (scale, target_scale): x @ (c_in W_enc) =
        (c_in x) @ W_enc, and W_dec / c_out, b_dec / c_out, W_skip c_in / c_out give
        x_hat' = x_hat(c_in x) / c_out. An SAE has one scale (b_dec is also its pre-bias)."""
        c_out = scale if target_scale is None else target_scale
        if c_out != scale and not self.is_transcoder:
            raise ValueError(f"fold_input_scale_: target_scale={target_scale!r} is invalid for an "
                             f"SAE (no cfg.target_hook); allowed: None or scale={scale!r}")
        self.W_enc.mul_(scale)
        self.W_dec.div_(c_out)
        self.b_dec.div_(c_out)
        if self.cfg.skip:
            self.W_skip.mul_(scale / c_out)

    # -- persistence
    def save(self, path: str | pathlib.Path) -> pathlib.Path:
        """Write folder `path`: cfg.json (architecture, format_version) + sae.safetensors."""
        path = pathlib.Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg = self.cfg.to_dict() | {
            "architecture": self.architecture,
            "format_version": FORMAT_VERSION,
        }
        (path / "cfg.json").write_text(json.dumps(cfg, indent=2))
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
            str(path / "sae.safetensors"),
        )
        return path

    @staticmethod
    def load(path: str | pathlib.Path, *, device: str | torch.device = "cpu") -> SAE:
        """Load any registered architecture from a folder written by `save`."""
        path = pathlib.Path(path)
        cfg = SAEConfig.from_dict(json.loads((path / "cfg.json").read_text()))
        sae = SAE.from_config(cfg)
        sae.load_state_dict(load_file(str(path / "sae.safetensors")), strict=True)
        return sae.to(device)

    @staticmethod
    def from_config(cfg: SAEConfig) -> SAE:
        return get_sae_class(cfg.architecture)(cfg)
