"""BatchTopK SAE (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders").

Training keeps the top B*k pre-activations over the whole batch (so k active latents per token
on average), and tracks a threshold theta = EMA of the smallest positive activation kept per
batch. Inference uses the threshold, token by token:  acts = pre * (pre > theta).
Until a threshold has been estimated (buffer < 0) inference falls back to batch top-k.
The kept (row, latent) pairs feed the same sparse kernels as TopK (ragged rows).
Folding the input scale leaves pre-activations unchanged, so theta needs no rescaling.

Shape legend: B batch, D width, F latents, N kept (row, latent) pairs (= B*k), m candidates
per row.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelens_lite import kernels
from saelens_lite.saes.base import SAE, SAEConfig, TrainOutput, aux_k, aux_weight, auxk_loss
from saelens_lite.saes.registry import register


@register("batchtopk")
class BatchTopKSAE(SAE):
    uses_k = True

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.tensor(-1.0, dtype=torch.float32))

    @torch.no_grad()
    def _batch_topk(self, x_BD: Tensor, dead_mask_F: Tensor | None = None, k_aux: int = 0):
        """(rows_N, cols_N, pre_N, aux): the top B*k positive pre-activations of the batch
        (rows sorted; pre_N exact in the parameter dtype) and aux = (aux_pre_BK, aux_idx_BK),
        the top k_aux dead latents of each row for AuxK (None without a dead mask).

        One dense no-grad matmul (chunked: each block is reduced while in cache), then
          1. t = the (B*k)-th largest of the candidates {each row's top 2k}, a lower bound on
             the (B*k)-th largest of all B*F values (a subset's order statistic is never larger);
          2. the answer is exactly the top B*k of {pre >= t}, a set of about B*k values.
        Why: a flat top-(B*k) over B*F values runs single-threaded on CPU, and per-row candidates
        alone are inexact whenever a token wants more than 2k latents, which early in training is
        every batch (high-norm tokens take dozens); re-running the matmul with wider candidates
        made a step ~8x slower than TopK.
        """
        cfg, W = self.cfg, self.W_enc
        B, F_ = x_BD.shape[0], cfg.d_sae
        dev = x_BD.device.type
        dt = cfg.torch_select_dtype
        if dt is None and torch.is_autocast_enabled(dev):
            dt = torch.get_autocast_dtype(dev)  # as kernels.topk_select: autocast asks for it
        exact = dt is None or dt == W.dtype
        n_keep, m = min(B * cfg.k, B * F_), min(2 * cfg.k, F_)
        with torch.autocast(dev, enabled=False):
            x_BD = x_BD.to(W.dtype)
            xc_BD = (x_BD - self.b_dec).to(dt or W.dtype)
            W_DF, b_F = W.to(xc_BD.dtype), self.b_enc.to(xc_BD.dtype)
            pre_BF = xc_BD.new_empty(B, F_)
            cand_Bm = xc_BD.new_empty(B, m)
            step = B if dev != "cpu" else 512
            for s in range(0, B, step):
                blk = pre_BF[s : s + step]
                torch.addmm(b_F, xc_BD[s : s + step], W_DF, out=blk)
                cand_Bm[s : s + step] = blk.topk(m, dim=-1, sorted=False).values
            t = cand_Bm.view(-1).topk(n_keep, sorted=False).values.min().clamp_min(0)
            flat_N = torch.nonzero((pre_BF >= t).view(-1)).squeeze(1)  # row-major: rows sorted
            pre_N = pre_BF.view(-1)[flat_N]
            if flat_N.numel() > n_keep:
                pre_N, top = pre_N.topk(n_keep, sorted=False)
                flat_N, order = flat_N[top].sort()
                pre_N = pre_N[order]
            pos = pre_N > 0
            flat_N, pre_N = flat_N[pos], pre_N[pos]
            rows_N, cols_N = flat_N // F_, flat_N % F_
            aux = None
            if dead_mask_F is not None and k_aux > 0:
                aux_pre_BK, aux_idx_BK = pre_BF.masked_fill_(~dead_mask_F, -float("inf")).topk(
                    k_aux, dim=-1, sorted=False
                )
                if not exact:
                    aux_pre_BK = kernels.select_preacts(x_BD, W, self.b_enc, self.b_dec, aux_idx_BK)
                aux = (aux_pre_BK, aux_idx_BK)
            if not exact:  # chosen in low precision; the kept values are recomputed exactly
                pattern = kernels.SparsePattern.from_coo(rows_N, cols_N, B, F_)
                pre_N = kernels.select_preacts(x_BD, W, self.b_enc, self.b_dec, pattern)
        return rows_N, cols_N, pre_N, aux

    def encode(self, x_BD: Tensor) -> Tensor:
        if float(self.threshold) < 0:
            x2_BD = x_BD.reshape(-1, x_BD.shape[-1]).to(self.W_enc.dtype)
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
        rows_N, cols_N, pre_N, aux = self._batch_topk(x_BD, dead_mask_F, k_aux)
        with torch.no_grad():
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
            losses["auxk"] = auxk_loss(self, x_BD, x_hat_BD, *aux, aux_scale)
            loss = loss + cfg.aux_coeff * aux_weight(x_BD) * losses["auxk"]
        fired_F = torch.zeros(cfg.d_sae, dtype=torch.bool, device=x_BD.device)
        fired_F[cols_N] = True
        return self._output(x_BD, x_hat_BD, fired_F, torch.tensor(cols_N.numel() / B), losses, loss)
