"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

    z = ReLU(TopK_k((x - b_dec) @ W_enc + b_enc)),   x_hat = z @ W_dec + b_dec
    L = ||x - x_hat||^2 + aux_coeff * L_aux  [+ multi_topk_coeff * ||x - x_hat_4k||^2]
Decoder rows are free in norm from a 0.1 start by default (cfg.decoder_norm "auto": free for an
SAE, as SAELens' TopK with rescale_acts_by_decoder_norm=False; unit for a transcoder), or kept at
unit norm (gradient parallel to a row removed, then renormalised; decoder_norm="unit").
Training uses the sparse kernels: a chunked no-grad matmul + topk forward, then gradients
that touch only the K selected latents per token (saelens_lite.kernels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saelens_lite import kernels
from saelens_lite.saes.base import SAE, TrainOutput
from saelens_lite.saes.config import check_bools, check_numbers
from saelens_lite.saes.registry import register
from saelens_lite.saes.terms import AuxKConfig, aux_k, aux_weight, auxk_loss


@dataclass
class TopKConfig(AuxKConfig):
    """TopKSAE's config: the shared and AuxK fields, and Multi-TopK."""

    architecture: str = "topk"
    """As SAEConfig.architecture."""
    multi_topk: bool = False
    """Add the Multi-TopK term L(4k) / 8 (Gao et al. 2024) so the SAE works at other k."""
    multi_topk_coeff: float = 1 / 8
    """Weight of the 4k reconstruction term when multi_topk is on."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bools(self, ("multi_topk",))
        check_numbers(self, ("multi_topk_coeff",))


@register("topk")
class TopKSAE(SAE):
    config_class = TopKConfig
    uses_k = True
    rank_selected = True
    supports_fast_step = True
    supports_transcoder = True

    @classmethod
    def fast_step_supports(cls, options) -> bool:
        """The fast step has no Multi-TopK term."""
        return super().fast_step_supports(options) and not options.get("multi_topk", False)

    def sparse_candidates(self) -> int:
        return self.cfg.k

    def sparse_keep(self, x_BD: Tensor, pre_BK: Tensor) -> tuple[Tensor, Tensor]:
        """Every candidate with pre > 0 (the ReLU); ranked by pre."""
        pre_N = pre_BK.reshape(-1)
        return pre_N > 0, pre_N

    def _select(self, x_BD: Tensor, k: int, **kw) -> kernels.TopKSelection:
        return kernels.topk_select(
            x_BD.to(self.W_enc.dtype),
            self.W_enc,
            self.b_enc,
            self.b_pre,
            k,
            compute_dtype=self.cfg.torch_select_dtype,
            **kw,
        )

    def encode_sparse(self, x_BD: Tensor) -> tuple[Tensor, Tensor]:
        """(vals_BK, idx_BK): the fast inference path (no dense (B, F) output)."""
        lead = x_BD.shape[:-1]
        sel = self._select(x_BD.reshape(-1, x_BD.shape[-1]), self.cfg.k)
        return torch.relu(sel.pre_BK).view(*lead, -1), sel.idx_BK.view(*lead, -1)

    def encode(self, x_BD: Tensor) -> Tensor:
        vals_BK, idx_BK = self.encode_sparse(x_BD)
        return vals_BK.new_zeros(*vals_BK.shape[:-1], self.cfg.d_sae).scatter_(-1, idx_BK, vals_BK)

    def activate(self, pre_BF: Tensor, x_BD: Tensor) -> Tensor:
        """ReLU of each row's k largest pre-activations, selected on the given pre_BF (encode
        selects in cfg.select_dtype: only near-ties at the k-th place can differ)."""
        vals_BK, idx_BK = pre_BF.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre_BF).scatter_(-1, idx_BK, torch.relu(vals_BK))

    def _reconstruct(self, x_BD, pre_BK, idx_BK) -> tuple[Tensor, Tensor]:
        vals_BK = torch.relu(
            kernels.select_preacts(x_BD, self.W_enc, self.b_enc, self.b_pre, idx_BK, pre_BK)
        )
        dec_BD = kernels.sparse_decode(idx_BK, vals_BK, self.W_dec) + self.b_dec
        return self.add_skip(x_BD, dec_BD), vals_BK

    def training_forward(
        self, x_BD, *, target_BD=None, sparsity_scale=1.0, dead_mask_F=None
    ) -> TrainOutput:
        cfg = self.cfg
        x_BD = x_BD.to(self.W_enc.dtype)
        y_BD = x_BD if target_BD is None else target_BD.to(x_BD.dtype)
        k_sel = min(4 * cfg.k, cfg.d_sae) if cfg.multi_topk else cfg.k
        k_aux, aux_scale = aux_k(self, dead_mask_F)
        sel = self._select(x_BD, k_sel, sorted=cfg.multi_topk, dead_mask_F=dead_mask_F, k_aux=k_aux)
        pre_BK, idx_BK = sel.pre_BK[:, : cfg.k], sel.idx_BK[:, : cfg.k]
        x_hat_BD, vals_BK = self._reconstruct(x_BD, pre_BK, idx_BK)
        mse = (x_hat_BD - y_BD).pow(2).sum(-1).mean()
        losses = {"mse": mse}
        loss = mse
        if cfg.multi_topk:
            x_hat4_BD, _ = self._reconstruct(x_BD, sel.pre_BK, sel.idx_BK)
            losses["multi_topk_mse"] = (x_hat4_BD - y_BD).pow(2).sum(-1).mean()
            loss = loss + cfg.multi_topk_coeff * losses["multi_topk_mse"]
        if k_aux:
            losses["auxk"] = auxk_loss(
                self, x_BD, x_hat_BD, sel.aux_pre_BK, sel.aux_idx_BK, aux_scale, y_BD
            )
            loss = loss + cfg.aux_coeff * aux_weight(y_BD) * losses["auxk"]
        with torch.no_grad():
            pos_BK = vals_BK > 0
            fired_F = torch.zeros(cfg.d_sae, dtype=torch.bool, device=x_BD.device)
            fired_F[idx_BK[pos_BK]] = True
            l0 = pos_BK.sum(-1).float().mean()
        return self._output(y_BD, x_hat_BD, fired_F, l0, losses, loss)
