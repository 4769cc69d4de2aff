"""Plain autoencoder: the SAE's parameters and maths without any sparsity term.

    a = ReLU((x - b_dec) @ W_enc + b_enc),   x_hat = a @ W_dec + b_dec,   L = ||x - x_hat||^2
d_sae < d_in gives an undercomplete bottleneck (close to PCA on the span it keeps), d_sae > d_in
an overcomplete code that nothing pushes towards sparsity. Decoder rows stay at unit norm (as
for TopK) so the code's scale is fixed by the encoder alone.

Shape legend: B batch, D d_in, F d_sae.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelens_lite.saes.base import SAE, TrainOutput
from saelens_lite.saes.registry import register


@register("dense")
class DenseAE(SAE):
    is_sparse_coder = False  # a baseline of the comparison (SAE.is_sparse_coder)

    def encode(self, x_BD: Tensor) -> Tensor:
        return torch.relu(self.pre_acts(x_BD))

    def _input(self, x_BD: Tensor) -> Tensor:
        """What the encoder sees during training (the denoising subclass corrupts it)."""
        return x_BD

    def training_forward(self, x_BD, *, sparsity_scale=1.0, dead_mask_F=None) -> TrainOutput:
        x_BD = x_BD.to(self.W_enc.dtype)
        acts_BF = self.encode(self._input(x_BD) if self.training else x_BD)
        x_hat_BD = self.decode(acts_BF)
        mse = (x_hat_BD - x_BD).pow(2).sum(-1).mean()
        active_BF = acts_BF > 0
        return self._output(x_BD, x_hat_BD, active_BF.any(0), active_BF.sum(-1).float().mean(),
                            {"mse": mse}, mse)
