"""ReLU SAE with decoder-norm-weighted L1
(Anthropic, "Towards Monosemanticity" + the April 2024 update).

    f = ReLU((x - b_dec) @ W_enc + b_enc),   x_hat = f @ W_dec + b_dec
    L = ||x - x_hat||^2 + lambda * sum_i f_i ||W_dec_i||       (decoder rows are not renormalised)
The pre-bias form is a reparametrisation of the update's W_e x + b_e (b_e' = b_e - b_dec W_e).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from saelens_lite.saes.base import SAE, TrainOutput
from saelens_lite.saes.config import SAEConfig, check_numbers
from saelens_lite.saes.registry import register


@dataclass
class ReLUConfig(SAEConfig):
    """ReLUSAE's config: the shared fields and the L1 weight."""

    sparsity_field: ClassVar[str | None] = "l1_coeff"
    architecture: str = "relu"
    """As SAEConfig.architecture."""
    l1_coeff: float = 5.0
    """Weight of sum_i |f_i| ||W_dec_i|| (Anthropic, April 2024 update, lambda=5 with inputs
    scaled so E||x|| = sqrt(D))."""
    decoder_init_norm: float = 1.0
    """Norm of the decoder rows at init (the encoder starts as their transpose, so its columns
    have this norm too); the rows are free in norm throughout. 0.1 is SAELens'
    StandardTrainingSAE start (decoder_init_norm, after Anthropic's April 2024 update)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_numbers(self, ("l1_coeff",))
        check_numbers(self, ("decoder_init_norm",), positive=True)

    @property
    def decoder_start_norm(self) -> float:
        """The decoder rows' norm at init (decoder_init_norm)."""
        return self.decoder_init_norm


@register("relu")
class ReLUSAE(SAE):
    config_class = ReLUConfig
    unit_norm_decoder = False
    supports_transcoder = True

    def encode(self, x_BD: Tensor) -> Tensor:
        return self.activate(self.pre_acts(x_BD), x_BD)

    def activate(self, pre_BF: Tensor, x_BD: Tensor) -> Tensor:
        """ReLU(pre)."""
        return torch.relu(pre_BF)

    def training_forward(
        self, x_BD, *, target_BD=None, sparsity_scale=1.0, dead_mask_F=None
    ) -> TrainOutput:
        y_BD = x_BD if target_BD is None else target_BD
        acts_BF = self.encode(x_BD)
        x_hat_BD = self.add_skip(x_BD, self.decode(acts_BF))
        mse = (x_hat_BD - y_BD).pow(2).sum(-1).mean()
        l1 = (acts_BF * self.W_dec.norm(dim=1)).sum(-1).mean()
        loss = mse + sparsity_scale * self.cfg.l1_coeff * l1
        active_BF = acts_BF > 0
        return self._output(
            y_BD,
            x_hat_BD,
            active_BF.any(0),
            active_BF.sum(-1).float().mean(),
            {"mse": mse, "l1": l1},
            loss,
        )
