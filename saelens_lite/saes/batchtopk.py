"""BatchTopK SAE (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders").

Training keeps the top B*k pre-activations over the whole batch (so k active latents per token
on average), and tracks a threshold theta = EMA of the smallest positive activation kept per
batch. Inference uses the threshold, token by token:  acts = pre * (pre > theta).
Until a threshold has been estimated (buffer < 0) inference falls back to batch top-k.
The kept (row, latent) pairs feed the same sparse kernels as TopK (ragged rows).
Folding the input scale leaves pre-activations unchanged, so theta needs no rescaling.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelens_lite import kernels
from saelens_lite.saes.base import SAE, SAEConfig, TrainOutput, aux_k, auxk_loss
from saelens_lite.saes.registry import register


@register("batchtopk")
class BatchTopKSAE(SAE):
    uses_k = True

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.tensor(-1.0, dtype=torch.float32))

    def _batch_topk(self, x_BD: Tensor, dead_mask_F: Tensor | None = None, k_aux: int = 0):
        """(rows_N, cols_N, pre_N) of the top B*k positive pre-activations (rows sorted), and
        the AuxK selection (kernels.TopKSelection, its aux fields set when k_aux > 0).

        A flat top-(B*k) over B*F values is slow on CPU, so candidates are each row's top m
        (m = 2k first, chunked no-grad matmul). The result is exact unless some row had all m
        candidates kept (it may hold more); then m doubles and the selection is redone.
        """
        B, F_ = x_BD.shape[0], self.cfg.d_sae
        n_keep = min(B * self.cfg.k, B * F_)
        m = min(2 * self.cfg.k, F_)
        while True:
            sel = kernels.topk_select(
                x_BD,
                self.W_enc,
                self.b_enc,
                self.b_dec,
                m,
                dead_mask_F=dead_mask_F,
                k_aux=k_aux,
                compute_dtype=self.cfg.torch_select_dtype,
            )
            vals_N, flat_N = sel.pre_BK.reshape(-1).topk(n_keep, sorted=False)
            if m == F_ or int(torch.bincount(flat_N // m, minlength=B).max()) < m:
                break
            m = min(2 * m, F_)
        keep = vals_N > 0
        vals_N, flat_N = vals_N[keep], flat_N[keep]
        flat_N, order = flat_N.sort()  # row-major order over the (B, m) candidates: rows sorted
        return flat_N // m, sel.idx_BK.reshape(-1)[flat_N], vals_N[order], sel

    def encode(self, x_BD: Tensor) -> Tensor:
        if float(self.threshold) < 0:
            x2_BD = x_BD.reshape(-1, x_BD.shape[-1]).to(self.W_enc.dtype)
            with torch.no_grad():
                rows, cols, vals, _ = self._batch_topk(x2_BD)
            acts_BF = vals.new_zeros(len(x2_BD), self.cfg.d_sae).index_put_((rows, cols), vals)
            return acts_BF.view(*x_BD.shape[:-1], -1)
        pre_BF = self.pre_acts(x_BD)
        return pre_BF * (pre_BF > self.threshold.to(pre_BF.dtype))

    def training_forward(self, x_BD, *, sparsity_scale=1.0, dead_mask_F=None) -> TrainOutput:
        cfg = self.cfg
        x_BD = x_BD.to(self.W_enc.dtype)
        B = x_BD.shape[0]
        k_aux, aux_scale = aux_k(self, dead_mask_F)
        with torch.no_grad():
            rows_N, cols_N, pre_N, sel = self._batch_topk(x_BD, dead_mask_F, k_aux)
            if pre_N.numel():
                m = pre_N.min().float()
                first = self.threshold < 0
                self.threshold.copy_(
                    torch.where(
                        first,
                        m,
                        cfg.threshold_momentum * self.threshold + (1 - cfg.threshold_momentum) * m,
                    )
                )
        pattern = kernels.SparsePattern.from_coo(rows_N, cols_N, B, cfg.d_sae)
        vals_N = torch.relu(
            kernels.select_preacts(x_BD, self.W_enc, self.b_enc, self.b_dec, pattern, pre_N)
        )
        x_hat_BD = kernels.sparse_decode(pattern, vals_N, self.W_dec) + self.b_dec
        mse = (x_hat_BD - x_BD).pow(2).sum(-1).mean()
        losses = {"mse": mse}
        loss = mse
        if k_aux:
            losses["auxk"] = auxk_loss(
                self, x_BD, x_hat_BD, sel.aux_pre_BK, sel.aux_idx_BK, aux_scale
            )
            loss = loss + cfg.aux_coeff * losses["auxk"]
        fired_F = torch.zeros(cfg.d_sae, dtype=torch.bool, device=x_BD.device)
        fired_F[cols_N] = True
        return self._output(x_BD, x_hat_BD, fired_F, torch.tensor(cols_N.numel() / B), losses, loss)
