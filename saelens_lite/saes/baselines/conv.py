"""Convolutional autoencoder whose decoder mirrors its encoder with transposed convolutions.

1d (activations, input (B, S, D) with D = d_in channels), causal so that a spliced
reconstruction at token t reads only tokens <= t (a model then cannot see the future through it):
    encoder  Conv1d(D -> C, k) -> ReLU -> Conv1d(C -> F, k) -> ReLU       (left padding k - 1)
    decoder  ConvT1d(F -> C, k) -> ReLU -> ConvT1d(C -> D, k)             (last k - 1 outputs cut)
so each token has F = d_sae latents, the same per-token budget as an SAE of width d_sae.
2d (images, input (B, 1, H, W) or flattened (B, H*W), H = W = sqrt(d_in)):
    encoder  Conv2d(1 -> C, k, stride 2) -> ReLU -> Conv2d(C -> F, k, stride 2) -> ReLU
    decoder  ConvT2d(F -> C, k, stride 2) -> ReLU -> ConvT2d(C -> 1, k, stride 2)
with "same" padding, so the code is F channels on an (H/4, W/4) grid: F * H * W / 16 numbers.
C = cfg.conv_channels (0: one layer each way), k = cfg.conv_kernel, F = cfg.d_sae. Decoder layer
i has the weight shape of encoder layer n-1-i (Conv weights are (out, in, ...), transposed ones
(in, out, ...)). Loss: ||x - x_hat||^2 per example (per token for 1d).

Flattened (B, D) rows are accepted, so the token-level trainer can train it: for 2d they are
images; for 1d they are length-1 sequences (no context: `saelens_lite.compare` trains 1d models
on whole (B, S, D) contexts instead). Shape legend: B batch, S sequence, D d_in, C hidden
channels, F latent channels, H, W image height and width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from saelens_lite.saes.base import SAE, TrainOutput
from saelens_lite.saes.config import SAEConfig, invalid
from saelens_lite.saes.registry import register
from saelens_lite.saes.terms import fvu

ConvKind = Literal["1d", "2d"]
"""1d: causal convolutions over the token sequence; 2d: images (see ConvConfig.conv_kind)."""


@dataclass
class ConvConfig(SAEConfig):
    """ConvAE's config: the shared fields and the convolutions'."""

    architecture: str = "conv"
    """As SAEConfig.architecture."""
    conv_kind: ConvKind = "1d"
    """"1d" (causal convolutions over the token sequence, input (B, S, D)) or "2d" (images,
    input (B, 1, H, W) or flattened (B, H*W) with H = W = sqrt(d_in))."""
    conv_channels: int = 32
    """Channels of the hidden layer between input and latents (0: no hidden layer)."""
    conv_kernel: int = 3
    """Kernel size (odd)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.conv_kind not in get_args(ConvKind):
            raise invalid("conv_kind", self.conv_kind, str(list(get_args(ConvKind))))
        if not isinstance(self.conv_channels, int) or self.conv_channels < 0:
            raise invalid("conv_channels", self.conv_channels, "an integer >= 0")
        k = self.conv_kernel
        if not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise invalid("conv_kernel", k, "an odd integer >= 1")


@register("conv")
class ConvAE(SAE):
    config_class = ConvConfig
    unit_norm_decoder = False
    tokenwise = False
    is_sparse_coder = False  # a baseline of the comparison (SAE.is_sparse_coder)

    def __init__(self, cfg):
        nn.Module.__init__(self)  # no dense W_enc / W_dec: the convolutions are the parameters
        self.cfg = cfg
        k, C, F_ = cfg.conv_kernel, cfg.conv_channels, cfg.d_sae
        if cfg.conv_kind == "1d":
            chans = [cfg.d_in] + ([C] if C else []) + [F_]
            conv, convT, kw = nn.Conv1d, nn.ConvTranspose1d, {}
        else:
            side = math.isqrt(cfg.d_in)
            n_down = len([C] if C else []) + 1
            if side * side != cfg.d_in or side % (2 ** n_down):
                raise ValueError(f"SAEConfig.d_in={cfg.d_in} is invalid for conv_kind='2d'; allowed: "
                                 f"a square side*side with side divisible by {2 ** n_down}")
            self.side = side
            chans = [1] + ([C] if C else []) + [F_]
            conv, convT = nn.Conv2d, nn.ConvTranspose2d
            kw = {"stride": 2, "padding": k // 2}
        dt = cfg.torch_dtype
        n = len(chans) - 1
        self.enc = nn.ModuleList(conv(chans[i], chans[i + 1], k, **kw, dtype=dt) for i in range(n))
        tkw = kw | ({"output_padding": 1} if kw else {})
        self.dec = nn.ModuleList(convT(chans[n - i], chans[n - i - 1], k, **tkw, dtype=dt) for i in range(n))

    @property
    def W_dec(self) -> Tensor:
        """The latent-side decoder weight (F, ...): its first dimension counts the latents."""
        return self.dec[0].weight

    @property
    def b_enc(self) -> Tensor:
        """The latents' bias (F,) (the last encoder layer's)."""
        return self.enc[-1].bias

    @property
    def b_dec(self) -> Tensor:
        """The output bias (the last decoder layer's): (D,) for 1d, (1,) for 2d."""
        return self.dec[-1].bias

    # -- shapes
    def _to_native(self, x: Tensor) -> tuple[Tensor, bool]:
        """(x in the convolution's layout, whether the input was flattened rows (B, D))."""
        x = x.to(self.dec[0].weight.dtype)
        if self.cfg.conv_kind == "1d":
            flat = x.dim() == 2
            x_BSD = x[:, None] if flat else x
            return x_BSD.transpose(1, 2), flat  # (B, D, S)
        flat = x.dim() == 2
        return (x.view(-1, 1, self.side, self.side) if flat else x), flat

    def _run(self, layers, h: Tensor, last_relu: bool) -> Tensor:
        k = self.cfg.conv_kernel
        for i, layer in enumerate(layers):
            if self.cfg.conv_kind == "1d":
                if isinstance(layer, nn.Conv1d):
                    h = layer(nn.functional.pad(h, (k - 1, 0)))  # causal: output t sees t-k+1..t
                else:
                    h = layer(h)
                    h = h[..., : h.shape[-1] - (k - 1)]  # causal: drop what spills past the end
            else:
                h = layer(h)
            if i < len(layers) - 1 or last_relu:
                h = torch.relu(h)
        return h

    # -- inference
    def encode(self, x: Tensor) -> Tensor:
        """(B, S, D) -> (B, S, F); (B, 1, H, W) -> (B, F, H/4, W/4); flattened rows (B, D) ->
        (B, F) for 1d, (B, F * H * W / 16) for 2d."""
        h, flat = self._to_native(x)
        z = self._run(self.enc, h, last_relu=True)
        if self.cfg.conv_kind == "1d":
            z = z.transpose(1, 2)  # (B, S, F)
            return z[:, 0] if flat else z
        return z.flatten(1) if flat else z

    def decode(self, z: Tensor) -> Tensor:
        """Inverse shapes of `encode`."""
        if self.cfg.conv_kind == "1d":
            flat = z.dim() == 2
            h = (z[:, None] if flat else z).transpose(1, 2)
            x_BSD = self._run(self.dec, h.to(self.dec[0].weight.dtype), last_relu=False).transpose(1, 2)
            return x_BSD[:, 0] if flat else x_BSD.contiguous()
        flat = z.dim() == 2
        if flat:
            s = self.side // 2 ** len(self.enc)
            z = z.view(-1, self.cfg.d_sae, s, s)
        x = self._run(self.dec, z.to(self.dec[0].weight.dtype), last_relu=False)
        return x.flatten(1) if flat else x

    # -- training
    def training_forward(self, x, *, sparsity_scale=1.0, dead_mask_F=None) -> TrainOutput:
        z = self.encode(x)
        x_hat = self.decode(z)
        x = x.to(x_hat.dtype)
        x_ND, x_hat_ND = x.reshape(x.shape[0], -1), x_hat.reshape(x.shape[0], -1)
        if self.cfg.conv_kind == "1d" and x.dim() == 3:  # one row per token
            x_ND, x_hat_ND = x.reshape(-1, x.shape[-1]), x_hat.reshape(-1, x.shape[-1])
        mse = (x_hat_ND - x_ND).pow(2).sum(-1).mean()
        with torch.no_grad():
            ch_dim = -1 if self.cfg.conv_kind == "1d" else 1
            zc = z if (self.cfg.conv_kind == "1d" or z.dim() == 4) else z.view(
                z.shape[0], self.cfg.d_sae, -1)
            fired_F = (zc > 0).movedim(ch_dim, -1).reshape(-1, self.cfg.d_sae).any(0)
            l0 = (z > 0).reshape(x_ND.shape[0], -1).sum(-1).float().mean()
        return TrainOutput(mse, x_hat, fired_F, l0.detach(), fvu(x_ND, x_hat_ND, mse), {"mse": mse})

    @torch.no_grad()
    def init_from_data_(self, x_ND: Tensor) -> None:
        """Output bias = the data mean (per channel for 1d, the pixel mean for 2d)."""
        x = x_ND.to(self.dec[-1].bias.device, self.dec[-1].bias.dtype)
        mean = x.reshape(-1, x.shape[-1]).mean(0) if self.cfg.conv_kind == "1d" else x.mean().reshape(1)
        self.dec[-1].bias.copy_(mean)

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Trained on c x, used on x: first encoder weight times c, last decoder layer / c."""
        self.enc[0].weight.mul_(scale)
        self.dec[-1].weight.div_(scale)
        self.dec[-1].bias.div_(scale)
