"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead").

    pre = (x - b_dec) @ W_enc + b_enc,   acts = pre * H(pre - theta),   theta = exp(log_threshold)
    L = ||x - x_hat||^2 + l0_coeff * sum_i H(pre_i - theta_i)
H has no useful gradient, so theta is trained with straight-through estimators using the
rectangle kernel K(u) = 1{|u| < 1/2} of bandwidth eps:
    d JumpReLU / d theta := -(theta / eps) K((pre - theta) / eps)
    d H(pre - theta) / d theta := -(1 / eps) K((pre - theta) / eps)
(pre receives the ordinary gradient H(pre - theta) through JumpReLU and none through the L0 step.)
Decoder rows are kept at unit norm, as in the paper.
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
    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(
            torch.full((cfg.d_sae,), math.log(cfg.jumprelu_init_threshold), dtype=cfg.torch_dtype)
        )

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def encode(self, x_BD: Tensor) -> Tensor:
        pre_BF = self.pre_acts(x_BD)
        return pre_BF * (pre_BF > self.threshold)

    def training_forward(self, x_BD, *, sparsity_scale=1.0, dead_mask_F=None) -> TrainOutput:
        eps = self.cfg.jumprelu_bandwidth
        x_BD = x_BD.to(self.W_enc.dtype)
        pre_BF = self.pre_acts(x_BD)
        theta_F = self.threshold
        acts_BF = jumprelu(pre_BF, theta_F, eps)
        x_hat_BD = self.decode(acts_BF)
        mse = (x_hat_BD - x_BD).pow(2).sum(-1).mean()
        l0 = heaviside_step(pre_BF, theta_F, eps).sum(-1).mean()
        loss = mse + sparsity_scale * self.cfg.l0_coeff * l0
        return self._output(
            x_BD, x_hat_BD, (acts_BF > 0).any(0), l0.detach(), {"mse": mse, "l0": l0}, loss
        )
