"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead").

    pre = (x - b_dec) @ W_enc + b_enc,   acts = pre * H(pre - theta),   theta = exp(log_threshold)
    L = ||x - x_hat||^2 + lambda * S(L0) + mu * sum_i dead_i ReLU(theta_i - pre_i)
    L0 = sum_i H(pre_i - theta_i), averaged over the batch
    S(L0) = e^2 + nu_t e,  e = L0 / k - 1, with cfg.jumprelu_target_l0 (default), else L0 (the
    paper). e^2 alone is dictionary_learning's JumpReluTrainer target; it settles where its
    push balances the reconstruction's pull, above k (SmolLM2, 8x, k = 32, 200k tokens:
    L0 47 and 50). nu_t is the multiplier of the augmented Lagrangian of e = 0 (method of
    multipliers, Hestenes 1969, Powell 1969): nu_{t+1} = nu_t + 2 rate s_t e_t after each
    optimizer step (rate = cfg.jumprelu_l0_adapt, nu_0 = 0, s_t the sparsity warm-up scale,
    e_t clipped to +-L0_ASCENT_CLIP against wind-up),
    which removes the offset (L0 31 and 30 there, at the FVU the quadratic penalty alone
    gives at that L0).
H has no useful gradient, so theta and pre are trained with straight-through estimators using
the rectangle kernel K = K((pre - theta) / eps), K(u) = 1{|u| < 1/2}, of bandwidth eps:
    d JumpReLU / d theta := -(theta / eps) K,    d JumpReLU / d pre := H(pre - theta) + (theta / eps) K
    d H(pre - theta) / d theta := -(1 / eps) K,  d H(pre - theta) / d pre := (1 / eps) K
The pre derivatives (cfg.jumprelu_pre_grad) mirror the theta ones, as H depends on pre - theta:
Anthropic's January 2025 update lets the STE's gradient reach all parameters, where
Rajamanoharan et al. give pre only H through JumpReLU and nothing through the L0 step. A latent
within eps / 2 below its threshold then learns whether firing would lower reconstruction plus
sparsity loss, instead of getting no gradient at all (synthetic benchmark, 3 seeds: 64% -> 93%
of the features recovered, FVU 0.32 -> 0.26, same L0). Both pre derivatives are needed: the
JumpReLU one alone (reconstruction pulls, no L0 push back) collapsed a run to FVU 1.1.
Decoder rows are kept at unit norm, as in the paper. The last term (mu = cfg.jumprelu_pre_act_coeff,
Anthropic's pre-activation loss, as SAELens' calculate_pre_act_loss) acts on latents the trainer
reports dead: beyond eps / 2 below threshold it is their only gradient, and it lowers their
thresholds and raises their pre-activations until they fire again. With the pre derivatives it
adds little (benchmark, seeds 0/1: 92.6/91.4% recovered without it, 92.8/91.6% with it).

Short runs. The paper starts at theta = 0.001 and trains 100k+ steps; here a run may be a few
hundred steps, and three things decide whether latents survive long enough to learn a feature:
* init_from_data_ starts each theta_i at the (1 - k/F) quantile of latent i's pre-activations
  (L0 = k from step 0) and first scales W_enc so that the initial reconstruction is the
  least-squares one along the firing pattern. With W_enc = W_dec^T the latents that fire have
  pre-activations (so jumps) as large as a whole feature in random directions: the first
  reconstruction overshoots (FVU ~1.7 on the synthetic benchmark, where TopK starts at ~0.7),
  the MSE gradient shrinks every encoder column, the pre-activations fall below the thresholds
  within ~50 steps and most latents never fire again (no gradient reaches them).
* log theta gets cfg.jumprelu_threshold_lr_scale times the lr (lr_scales), so the thresholds
  keep up with the pre-activation scale.
* the bandwidth is of the order of the pre-activations' spread (cfg.jumprelu_bandwidth), so a
  useful share of tokens gives threshold (and pre) gradients each step. Benchmark, seeds 0/1/2:
  eps = 0.5 84/84% (seeds 0/1), 1 93/92/95%, 2 97/93/93% (no clear gain), 4 58/56% (seeds 0/1,
  no latent dead but FVU 0.42: the window then covers most tokens).

Data parallel: S is non-linear in the batch mean L0, so each rank differentiates S at the
global L0 (util.distributed.current_batch_mean, set by the trainer): L0_eff = L0_local + (L0_global - L0_local)
without grad has the global value and the local gradient, so the mean over ranks of
S'(L0_global) dL0_local is the single-process gradient S'(L0_global) dL0_global. In one
process batch_mean is None and nothing changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from saelens_lite.saes.base import SAE, TrainOutput
from saelens_lite.saes.config import SAEConfig, check_bools, check_numbers
from saelens_lite.saes.registry import register
from saelens_lite.util import distributed

L0_ASCENT_CLIP = 0.25
"""Bound on |e| in the multiplier's ascent nu += 2 rate s clip(e) (anti-windup). Early in a run
L0 overshoots (SmolLM2, k = 32: to ~90 within 12 steps, the quadratic has no slope at e = 0);
the unclipped ascent then winds nu up to ~3 where ~1.4 holds L0 at k, L0 undershoots to ~24
for 100 steps and latents go silent that way (seed 0: 36% dead on held-out tokens). With the
clip: 33% / 6.4% / 0.2% dead for seeds 0 / 1 / 2 (36% / 8.8% / 0.3% before), FVU 0.123 / 0.111 /
0.119 (0.128 / 0.111 / 0.119) at L0 30.5 / 30.6 / 31.3; docs/benchmarks.md."""


INIT_OUTLIER_NORM = 5.0
"""Tokens with a norm above this many times the init sample's median norm do not enter the
least-squares scale c of `JumpReLUSAE.init_from_data_`. Language models have such tokens
(SmolLM2's BOS / attention-sink positions: norm ~60x the median); one in the 4096-token init
sample dominated both sums of c and shrank it from ~0.58 to ~0.22, and those runs lost
latents: held-out dead 33% / 6.4% / 0.2% over seeds 0 / 1 / 2 (SmolLM2, 8x, k = 32, 200k
tokens), with them left out 0.13% / 0.11% / 0.24% at FVU 0.119 / 0.117 / 0.119 (0.123 /
0.111 / 0.119 before); docs/benchmarks.md."""


@dataclass
class JumpReLUConfig(SAEConfig):
    """JumpReLUSAE's config: the shared fields (k: the target L0) and the sparsity penalty's,
    the straight-through estimators' and the thresholds' settings."""

    sparsity_field: ClassVar[str | None] = "l0_coeff"
    architecture: str = "jumprelu"
    """As SAEConfig.architecture."""
    l0_coeff: float = 20.0
    """Weight lambda of the sparsity term: lambda * (e^2 + nu e), e = L0 / k - 1, with
    jumprelu_target_l0 (nu: see jumprelu_l0_adapt), else lambda * L0 (Rajamanoharan et al.
    2024)."""
    jumprelu_target_l0: bool = True
    """Penalise (L0 / k - 1)^2, so k is the target L0 (dictionary_learning's JumpReluTrainer,
    target_l0), instead of the paper's lambda * L0, whose L0 depends on lambda, the data and the
    run length. Thresholds start where each latent fires on a fraction k / F of the init
    sample (init_from_data_), so training starts near L0 = k either way."""
    jumprelu_l0_adapt: float = 0.05
    """With jumprelu_target_l0: step size of the multiplier that makes L0 settle at k.
    The quadratic penalty alone balances the reconstruction's pull above k (L0 ~ 1.5 k in short
    runs on real activations); with a rate > 0 the sparsity term is the augmented Lagrangian
    of the constraint e = L0 / k - 1 = 0 (method of multipliers, Hestenes 1969, Powell 1969):
        lambda * (e^2 + nu_t e),   nu_{t+1} = nu_t + rate * 2 s_t e_t   (nu_0 = 0)
    after each optimizer step (s_t: the sparsity warm-up scale, 1 after it), so nu grows until
    the pull is cancelled at e = 0."""
    jumprelu_bandwidth: float = 1.0
    """Width epsilon of the rectangle kernel in the straight-through estimator. With inputs
    scaled to E||x|| = sqrt(D) pre-activations are O(1), so eps of that order (SAELens'
    settings after Anthropic's JumpReLU recipe use 2) puts a few percent in the window; SAELens'
    default 0.05 put too few there for a short run (docs/benchmarks.md, "JumpReLU
    straight-through settings")."""
    jumprelu_init_threshold: float = 0.001
    """Initial threshold theta (stored as log theta) before init_from_data_, and the floor of
    the data-based thresholds it sets."""
    jumprelu_threshold_lr_scale: float = 10.0
    """Learning rate of log theta relative to the other parameters. Adam moves each parameter
    by ~lr a step: an encoder weight of size ~1/sqrt(D) by ~lr sqrt(D) relative, log theta by
    only lr relative, so with one lr the thresholds lag the pre-activation scale by ~sqrt(D)
    (a short run then ends with L0 far from its target)."""
    jumprelu_pre_act_coeff: float = 1e-3
    """Weight of the pre-activation loss sum_i dead_i ReLU(theta_i - pre_i) that pulls latents
    that have stopped firing back to their thresholds (Anthropic's pre-activation loss,
    restricted to dead latents as SAELens' calculate_pre_act_loss does); 0 turns it off. Adam
    normalises the dead latents' gradients, so its size matters little."""
    jumprelu_pre_grad: bool = True
    """The straight-through estimators also give pre-activations a gradient, the
    kernel-smoothed derivative in pre that mirrors the one in theta (H depends on pre - theta):
    d JumpReLU / d pre := H + (theta / eps) K, d H / d pre := (1 / eps) K. Anthropic's January
    2025 update lets the STE's gradient reach all parameters, not only the thresholds. Latents
    just below threshold then learn from the reconstruction (and the L0 penalty) instead of
    only from the pre-activation loss (recovery and FVU on the synthetic benchmark:
    docs/benchmarks.md, "JumpReLU straight-through settings"). False: Rajamanoharan et al.
    2024 (no such gradient; pre-activations learn only where the latent fires)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_numbers(self, ("l0_coeff", "jumprelu_pre_act_coeff", "jumprelu_l0_adapt"))
        check_bools(self, ("jumprelu_target_l0", "jumprelu_pre_grad"))
        check_numbers(self, ("jumprelu_bandwidth", "jumprelu_init_threshold",
                             "jumprelu_threshold_lr_scale"), positive=True)  # fmt: skip


def _rect(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta, eps, pre_grad):
        ctx.save_for_backward(pre, theta)
        ctx.eps, ctx.pre_grad = eps, pre_grad
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        gk = g * (theta / ctx.eps) * _rect((pre - theta) / ctx.eps)
        g_pre = g * (pre > theta) + gk if ctx.pre_grad else g * (pre > theta)
        return g_pre, -gk.sum(0), None, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta, eps, pre_grad):
        ctx.save_for_backward(pre, theta)
        ctx.eps, ctx.pre_grad = eps, pre_grad
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        gk = g * (1.0 / ctx.eps) * _rect((pre - theta) / ctx.eps)
        return (gk if ctx.pre_grad else None), -gk.sum(0), None, None


def jumprelu(pre_BF: Tensor, theta_F: Tensor, eps: float, pre_grad: bool = True) -> Tensor:
    return _JumpReLU.apply(pre_BF, theta_F, eps, pre_grad)


def heaviside_step(pre_BF: Tensor, theta_F: Tensor, eps: float, pre_grad: bool = True) -> Tensor:
    return _Step.apply(pre_BF, theta_F, eps, pre_grad)


@register("jumprelu")
class JumpReLUSAE(SAE):
    config_class = JumpReLUConfig
    supports_transcoder = True
    # k is the target L0 (and the L0 the data-based init starts at), used as min(k, F); it is
    # not validated against d_sae (uses_k) so that imported inference-only SAEs need no k.

    def __init__(self, cfg: JumpReLUConfig):
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(
            torch.full((cfg.d_sae,), math.log(cfg.jumprelu_init_threshold), dtype=cfg.torch_dtype)
        )
        # nu_t, the multiplier of the target-L0 constraint (cfg.jumprelu_l0_adapt)
        nu_dtype = torch.float64 if cfg.torch_dtype == torch.float64 else torch.float32
        self.register_buffer("l0_multiplier", torch.zeros((), dtype=nu_dtype), persistent=False)
        self._l0_error: Tensor | None = None

    def training_state(self) -> dict[str, Tensor]:
        return {"l0_multiplier": self.l0_multiplier}

    @torch.no_grad()
    def after_optimizer_step_(self) -> None:
        super().after_optimizer_step_()
        if self._l0_error is not None:  # dual ascent; the global L0's error: exact in DDP
            self.l0_multiplier.add_(2 * self.cfg.jumprelu_l0_adapt * self._l0_error)
            # (the error is scaled by the sparsity warm-up: no wind-up while the penalty ramps)
            self._l0_error = None

    def lr_scales(self) -> dict[str, float]:
        return {"log_threshold": self.cfg.jumprelu_threshold_lr_scale}

    @property
    def _target_l0(self) -> int:
        return min(self.cfg.k, self.cfg.d_sae)

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    @torch.no_grad()
    def init_from_data_(
        self, x_ND: Tensor, target_ND: Tensor | None = None, *, max_tokens: int = 4096
    ) -> None:
        """b_dec as the base class does, then theta_i = the (1 - k/F) quantile of latent i's
        pre-activations on (at most max_tokens of) the sample, floored at
        cfg.jumprelu_init_threshold: every latent fires on a fraction k/F of tokens, L0 ~ k.
        Then W_enc, b_enc and theta are scaled by the least-squares
            c = <x - b_dec, a W_dec> / ||a W_dec||^2,   a = the activations at init,
        which keeps which latents fire and makes c a W_dec + b_dec the best reconstruction
        along them (the module docstring says why); for a transcoder x - b_dec there is its
        target y - b_dec (W_skip starts at 0). The sums defining c leave out tokens
        whose norm exceeds INIT_OUTLIER_NORM times the sample's median norm."""
        super().init_from_data_(x_ND, target_ND)
        x_ND = x_ND[:max_tokens].to(self.W_enc.device, self.W_enc.dtype)
        y_ND = x_ND if target_ND is None else target_ND[:max_tokens].to(x_ND)
        N, F_ = x_ND.shape[0], self.cfg.d_sae
        rank = N - min(max(round(N * self._target_l0 / F_), 1), N - 1)  # kthvalue's rank
        theta_F = torch.empty(F_, dtype=self.W_enc.dtype, device=self.W_enc.device)
        step = max(1, (1 << 24) // N)  # columns per chunk: (N, step) pre-activations at a time
        xc_ND = x_ND - self.b_pre
        res_ND = y_ND - self.b_dec  # the part of the target the latents reconstruct
        dec_ND = torch.zeros_like(res_ND)
        for s in range(0, F_, step):
            pre_Nc = torch.addmm(self.b_enc[s : s + step], xc_ND, self.W_enc[:, s : s + step])
            theta_c = pre_Nc.kthvalue(rank, dim=0).values.clamp_min(
                self.cfg.jumprelu_init_threshold
            )
            theta_F[s : s + step] = theta_c
            dec_ND.addmm_(pre_Nc * (pre_Nc > theta_c), self.W_dec[s : s + step])
        norm_N = x_ND.norm(dim=1)
        typical = norm_N <= INIT_OUTLIER_NORM * norm_N.median()  # outliers (BOS) left out of c
        res_ND, dec_ND = res_ND[typical], dec_ND[typical]
        yy = dec_ND.pow(2).sum()
        c = float((res_ND * dec_ND).sum() / yy) if yy > 0 else 1.0
        if c > 0:
            self.W_enc.mul_(c)
            self.b_enc.mul_(c)
            theta_F.mul_(c)
        self.log_threshold.copy_(theta_F.clamp_min(self.cfg.jumprelu_init_threshold).log())

    def encode(self, x_BD: Tensor) -> Tensor:
        return self.activate(self.pre_acts(x_BD), x_BD)

    def activate(self, pre_BF: Tensor, x_BD: Tensor) -> Tensor:
        """pre * H(pre - theta)."""
        return pre_BF * (pre_BF > self.threshold)

    def training_forward(
        self, x_BD, *, target_BD=None, sparsity_scale=1.0, dead_mask_F=None
    ) -> TrainOutput:
        cfg = self.cfg
        eps = cfg.jumprelu_bandwidth
        x_BD = x_BD.to(self.W_enc.dtype)
        y_BD = x_BD if target_BD is None else target_BD.to(x_BD.dtype)
        pre_BF = self.pre_acts(x_BD)
        theta_F = self.threshold
        acts_BF = jumprelu(pre_BF, theta_F, eps, cfg.jumprelu_pre_grad)
        x_hat_BD = self.add_skip(x_BD, self.decode(acts_BF))
        mse = (x_hat_BD - y_BD).pow(2).sum(-1).mean()
        l0 = heaviside_step(pre_BF, theta_F, eps, cfg.jumprelu_pre_grad).sum(-1).mean()
        losses = {"mse": mse, "l0": l0}
        if cfg.jumprelu_target_l0:
            mean = distributed.current_batch_mean()  # data parallel: the global batch's L0
            l0_eff = l0 if mean is None else l0 + (mean(l0) - l0).detach()
            err = l0_eff / self._target_l0 - 1
            sparsity = err.pow(2)
            if cfg.jumprelu_l0_adapt:
                sparsity = sparsity + self.l0_multiplier.to(err.dtype) * err
                losses["l0_multiplier"] = self.l0_multiplier.clone()  # logged: nu of this step
                if sparsity_scale > 0:  # warm-up: ascent scaled as the penalty, none while off
                    e = err.detach().clamp(-L0_ASCENT_CLIP, L0_ASCENT_CLIP)  # anti-windup
                    self._l0_error = e * sparsity_scale
        else:
            sparsity = l0
        loss = mse + sparsity_scale * cfg.l0_coeff * sparsity
        if cfg.jumprelu_pre_act_coeff and dead_mask_F is not None and dead_mask_F.any():
            # A per-token mean, so it needs no global statistic under data parallelism.
            losses["pre_act"] = ((theta_F - pre_BF).relu() * dead_mask_F).sum(-1).mean()
            loss = loss + cfg.jumprelu_pre_act_coeff * losses["pre_act"]
        return self._output(y_BD, x_hat_BD, (acts_BF > 0).any(0), l0.detach(), losses, loss)
