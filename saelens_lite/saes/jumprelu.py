"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead").

    pre = (x - b_dec) @ W_enc + b_enc,   acts = pre * H(pre - theta),   theta = exp(log_threshold)
    L = ||x - x_hat||^2 + lambda * S(L0),   L0 = sum_i H(pre_i - theta_i)
    S(L0) = (L0 / k - 1)^2 with cfg.jumprelu_target_l0 (default; dictionary_learning's
    JumpReluTrainer), else S(L0) = L0 (the paper).
H has no useful gradient, so theta is trained with straight-through estimators using the
rectangle kernel K(u) = 1{|u| < 1/2} of bandwidth eps:
    d JumpReLU / d theta := -(theta / eps) K((pre - theta) / eps)
    d H(pre - theta) / d theta := -(1 / eps) K((pre - theta) / eps)
(pre receives the ordinary gradient H(pre - theta) through JumpReLU and none through the L0 step.)
Decoder rows are kept at unit norm, as in the paper.

Threshold init: theta moves by about lr per Adam step in log space, so from the paper's
theta = 0.001 a run needs ~log(1000) / lr steps before latents with O(1) pre-activations can
become sparse (the paper trains 100k+ steps). init_from_data_ therefore starts each theta_i at
the (1 - k/F) quantile of latent i's pre-activations on the init sample: L0 = k from step 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from saelens_lite.saes.base import SAE, SAEConfig, TrainOutput
from saelens_lite.saes.registry import register


def _rect(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        grad_theta = (g * -(theta / ctx.eps) * _rect((pre - theta) / ctx.eps)).sum(0)
        return g * (pre > theta), grad_theta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        return None, (g * -(1.0 / ctx.eps) * _rect((pre - theta) / ctx.eps)).sum(0), None


def jumprelu(pre_BF: Tensor, theta_F: Tensor, eps: float) -> Tensor:
    return _JumpReLU.apply(pre_BF, theta_F, eps)


def heaviside_step(pre_BF: Tensor, theta_F: Tensor, eps: float) -> Tensor:
    return _Step.apply(pre_BF, theta_F, eps)


@register("jumprelu")
class JumpReLUSAE(SAE):
    # k is the target L0 (and the L0 the data-based init starts at), used as min(k, F); it is
    # not validated against d_sae (uses_k) so that imported inference-only SAEs need no k.

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(
            torch.full((cfg.d_sae,), math.log(cfg.jumprelu_init_threshold), dtype=cfg.torch_dtype)
        )

    @property
    def _target_l0(self) -> int:
        return min(self.cfg.k, self.cfg.d_sae)

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    @torch.no_grad()
    def init_from_data_(self, x_ND: Tensor, *, max_tokens: int = 4096) -> None:
        """b_dec as the base class does, then theta_i = the (1 - k/F) quantile of latent i's
        pre-activations on (at most max_tokens of) the sample, floored at
        cfg.jumprelu_init_threshold: every latent fires on a fraction k/F of tokens, L0 ~ k."""
        super().init_from_data_(x_ND)
        x_ND = x_ND[:max_tokens].to(self.W_enc.device, self.W_enc.dtype)
        N, F_ = x_ND.shape[0], self.cfg.d_sae
        rank = N - min(max(round(N * self._target_l0 / F_), 1), N - 1)  # kthvalue's rank
        theta_F = torch.empty(F_, dtype=self.W_enc.dtype, device=self.W_enc.device)
        step = max(1, (1 << 24) // N)  # columns per chunk: (N, step) pre-activations at a time
        xc_ND = x_ND - self.b_dec
        for s in range(0, F_, step):
            pre_Nc = torch.addmm(self.b_enc[s : s + step], xc_ND, self.W_enc[:, s : s + step])
            theta_F[s : s + step] = pre_Nc.kthvalue(rank, dim=0).values
        self.log_threshold.copy_(theta_F.clamp_min(self.cfg.jumprelu_init_threshold).log())

    def encode(self, x_BD: Tensor) -> Tensor:
        pre_BF = self.pre_acts(x_BD)
        return pre_BF * (pre_BF > self.threshold)

    def training_forward(self, x_BD, *, sparsity_scale=1.0, dead_mask_F=None) -> TrainOutput:
        cfg = self.cfg
        eps = cfg.jumprelu_bandwidth
        x_BD = x_BD.to(self.W_enc.dtype)
        pre_BF = self.pre_acts(x_BD)
        theta_F = self.threshold
        acts_BF = jumprelu(pre_BF, theta_F, eps)
        x_hat_BD = self.decode(acts_BF)
        mse = (x_hat_BD - x_BD).pow(2).sum(-1).mean()
        l0 = heaviside_step(pre_BF, theta_F, eps).sum(-1).mean()
        sparsity = (l0 / self._target_l0 - 1).pow(2) if cfg.jumprelu_target_l0 else l0
        loss = mse + sparsity_scale * cfg.l0_coeff * sparsity
        return self._output(
            x_BD, x_hat_BD, (acts_BF > 0).any(0), l0.detach(), {"mse": mse, "l0": l0}, loss
        )
