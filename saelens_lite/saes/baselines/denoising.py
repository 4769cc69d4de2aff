"""Denoising autoencoder (Vincent et al. 2008): the dense autoencoder trained to recover the
clean input from a corrupted one,

    x~ = m * (x + s * eps),  eps ~ N(0, I),  m_d ~ Bernoulli(1 - p)
    L = ||x - decode(encode(x~))||^2

with s = cfg.noise_std (Gaussian noise) and p = cfg.mask_prob (masking noise). Corruption is
applied only in training mode; `corrupt` is a plain function usable as data augmentation on any
batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelens_lite.saes.baselines.dense import DenseAE
from saelens_lite.saes.config import SAEConfig, check_numbers, invalid
from saelens_lite.saes.registry import register


@dataclass
class DenoisingConfig(SAEConfig):
    """DenoisingAE's config: the shared fields and the corruption's."""

    architecture: str = "denoising"
    """As SAEConfig.architecture."""
    noise_std: float = 0.2
    """Std of the Gaussian noise added to each input coordinate, in the units the model sees
    (the trainer scales inputs so E||x|| = sqrt(D): a coordinate's RMS is ~1)."""
    mask_prob: float = 0.0
    """Probability that an input coordinate is zeroed (masking noise, Vincent et al. 2008)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_numbers(self, ("noise_std",))
        if not isinstance(self.mask_prob, (int, float)) or not 0.0 <= self.mask_prob < 1.0:
            raise invalid("mask_prob", self.mask_prob, "a number in [0, 1)")


def corrupt(x: Tensor, *, noise_std: float = 0.0, mask_prob: float = 0.0,
            generator: torch.Generator | None = None) -> Tensor:
    """A corrupted copy of ``x`` (any shape): add N(0, noise_std^2) noise to every element, then
    zero each element with probability ``mask_prob`` (no rescaling, as in Vincent et al.)."""
    if noise_std < 0 or not 0 <= mask_prob < 1:
        raise ValueError(f"corrupt: noise_std={noise_std} must be >= 0 and mask_prob={mask_prob} in [0, 1)")
    out = x
    if noise_std > 0:
        out = out + noise_std * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    if mask_prob > 0:
        keep = torch.rand(x.shape, generator=generator, device=x.device) >= mask_prob
        out = out * keep.to(x.dtype)
    return out


@register("denoising")
class DenoisingAE(DenseAE):
    config_class = DenoisingConfig

    def _input(self, x_BD: Tensor) -> Tensor:
        return corrupt(x_BD, noise_std=self.cfg.noise_std, mask_prob=self.cfg.mask_prob)
