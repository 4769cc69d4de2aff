"""BatchTopK SAE (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders").

Pre-activations are ranked by their score  s = pre / r(x),  r(x) = ||x - b_dec|| / sqrt(D)
the token's RMS (cfg.relative_threshold; s = pre without it). Training keeps the B*k
(row, latent) pairs of the batch with the highest positive scores (so k active latents per
token on average) and tracks a threshold theta = EMA of the smallest score kept per batch.
Inference uses the threshold, token by token:  acts = pre * (s > theta). Until a threshold has
been estimated (buffer < 0) inference falls back to batch top-k. The kept (row, latent) pairs
feed the same sparse kernels as TopK (ragged rows); the kept values are pre, not s.

Why the score: interference in pre = w_f . (x - b_dec) grows with ||x - b_dec||, so on raw
pre-activations a batch-wide threshold hands high-norm tokens most of the B*k slots as false
positives, and a latent still learning its feature never reaches the threshold (it gets no
gradient). Dividing by r(x) gives every token the same false-positive rate; it is the batch
threshold of Bussmann et al.'s experiments, which standardise each token
(BatchTopKConfig.relative_threshold; docs/benchmarks.md, "BatchTopK score rule").

Folding the input scale c leaves pre unchanged and divides r by c, so a relative theta is
multiplied by c.

Shape legend: B batch, D width, F latents, N kept (row, latent) pairs (= B*k), m candidates
per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from saelens_lite import kernels
from saelens_lite.saes.base import SAE, TrainOutput
from saelens_lite.saes.config import check_bools, invalid
from saelens_lite.saes.registry import register
from saelens_lite.saes.terms import AuxKConfig, aux_k, aux_weight, auxk_loss


@dataclass
class BatchTopKConfig(AuxKConfig):
    """BatchTopKSAE's config: the shared and AuxK fields, and the inference threshold's."""

    # saved before relative_threshold existed: those SAEs threshold raw pre-activations
    legacy_defaults: ClassVar[dict] = AuxKConfig.legacy_defaults | {"relative_threshold": False}
    architecture: str = "batchtopk"
    """As SAEConfig.architecture."""
    threshold_momentum: float = 0.99
    """EMA momentum of the inference threshold (min positive kept activation)."""
    relative_threshold: bool = True
    """Rank pre-activations, and threshold them at inference, in units of each token's RMS
    r(x) = ||x - b_dec|| / sqrt(D): keep the batch's top B*k of pre / r, infer
    pre * (pre > theta * r). Bussmann et al. 2024 trained BatchTopK on activations standardised
    token by token (bartbussmann/BatchTopK main.py, input_unit_norm=True), where a batch-wide
    threshold is this rule. On raw pre-activations interference grows with ||x||, so
    high-norm tokens take most of the B*k slots with false positives and latents that are
    still learning never reach the threshold (ground-truth benchmark: docs/benchmarks.md,
    "BatchTopK score rule"). False: the threshold on raw pre-activations, a plain JumpReLU
    (what configs saved without this field load as)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.threshold_momentum < 1.0:
            raise invalid("threshold_momentum", self.threshold_momentum, "a number in [0, 1)")
        check_bools(self, ("relative_threshold",))


@register("batchtopk")
class BatchTopKSAE(SAE):
    config_class = BatchTopKConfig
    uses_k = True
    supports_fast_step = True
    supports_transcoder = True

    def __init__(self, cfg: BatchTopKConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.tensor(-1.0, dtype=torch.float32))

    def input_rms(self, x_BD: Tensor) -> Tensor | None:
        """(B,) r(x) = ||x - b_pre|| / sqrt(D) (b_pre: b_dec, 0 for a transcoder) in the parameter dtype (floored so that a token
        at b_dec gets a finite score); None when the threshold is absolute."""
        if not self.cfg.relative_threshold:
            return None
        xc_BD = x_BD.to(self.W_enc.dtype) - self.b_pre.detach()
        r_B = torch.linalg.vector_norm(xc_BD, dim=-1) / xc_BD.shape[-1] ** 0.5
        return r_B.clamp_min(torch.finfo(r_B.dtype).tiny ** 0.5)

    @torch.no_grad()
    def _batch_topk(self, x_BD: Tensor, dead_mask_F: Tensor | None = None, k_aux: int = 0):
        """(rows_N, cols_N, pre_N, aux): the B*k positive pre-activations of the batch with the
        highest scores pre / r (rows sorted; pre_N exact in the parameter dtype) and
        aux = (aux_pre_BK, aux_idx_BK), the top k_aux dead latents of each row for AuxK (None
        without a dead mask).

        One dense no-grad matmul (chunked: each block is reduced while in cache), then
          1. t = the (B*k)-th largest score among the candidates {each row's top 2k} (dividing
             a row by r > 0 keeps its order), a lower bound on the (B*k)-th largest of all B*F
             scores (a subset's order statistic is never larger);
          2. the answer is exactly the top B*k of {score >= t}, a set of about B*k values.
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
            r_B = self.input_rms(x_BD)
            xc_BD = (x_BD - self.b_pre).to(dt or W.dtype)
            W_DF, b_F = W.to(xc_BD.dtype), self.b_enc.to(xc_BD.dtype)
            # the scores are compared in one dtype everywhere, so steps 1 and 2 agree exactly
            r_B1 = None if r_B is None else r_B.to(xc_BD.dtype)[:, None]
            pre_BF = xc_BD.new_empty(B, F_)
            cand_Bm = xc_BD.new_empty(B, m)
            step = B if dev != "cpu" else 512
            blocks = [slice(s, s + step) for s in range(0, B, step)]
            for sl in blocks:
                blk = pre_BF[sl]
                torch.addmm(b_F, xc_BD[sl], W_DF, out=blk)
                cand_Bm[sl] = blk.topk(m, dim=-1, sorted=False).values
                if r_B1 is not None:
                    cand_Bm[sl] /= r_B1[sl]
            t = cand_Bm.view(-1).topk(n_keep, sorted=False).values.min().clamp_min(0)
            if r_B1 is None:
                keep_BF = pre_BF >= t
            else:
                keep_BF = torch.empty(B, F_, dtype=torch.bool, device=pre_BF.device)
                for sl in blocks:
                    torch.ge(pre_BF[sl] / r_B1[sl], t, out=keep_BF[sl])
            flat_N = torch.nonzero(keep_BF.view(-1)).squeeze(1)  # row-major: rows sorted
            pre_N = pre_BF.view(-1)[flat_N]
            score_N = pre_N if r_B1 is None else pre_N / r_B1.view(-1)[flat_N // F_]
            if flat_N.numel() > n_keep:
                score_N, top = score_N.topk(n_keep, sorted=False)
                flat_N, order = flat_N[top].sort()
                pre_N, score_N = pre_N[top][order], score_N[order]
            pos = pre_N > 0
            flat_N, pre_N = flat_N[pos], pre_N[pos]
            rows_N, cols_N = flat_N // F_, flat_N % F_
            aux = None
            if dead_mask_F is not None and k_aux > 0:
                aux_pre_BK, aux_idx_BK = pre_BF.masked_fill_(~dead_mask_F, -float("inf")).topk(
                    k_aux, dim=-1, sorted=False
                )
                if not exact:
                    aux_pre_BK = kernels.select_preacts(x_BD, W, self.b_enc, self.b_pre, aux_idx_BK)
                aux = (aux_pre_BK, aux_idx_BK)
            if not exact:  # chosen in low precision; the kept values are recomputed exactly
                pattern = kernels.SparsePattern.from_coo(rows_N, cols_N, B, F_)
                pre_N = kernels.select_preacts(x_BD, W, self.b_enc, self.b_pre, pattern)
        return rows_N, cols_N, pre_N, aux

    def sparse_candidates(self) -> int:
        """Each row's top 2k: the fast step caps a row at 2k latents (where `_batch_topk`
        widens its candidates instead, with a host sync)."""
        return min(2 * self.cfg.k, self.cfg.d_sae)

    def sparse_keep(self, x_BD: Tensor, pre_BK: Tensor) -> tuple[Tensor, Tensor]:
        """The B*k candidates of the batch with the highest positive scores pre / r(x) (r > 0,
        so a row's candidates keep their order)."""
        r_B = self.input_rms(x_BD)
        score_N = (pre_BK if r_B is None else pre_BK / r_B[:, None]).reshape(-1)
        n_keep = min(x_BD.shape[0] * self.cfg.k, score_N.numel())
        top_N = score_N.topk(n_keep, sorted=False).indices
        keep_N = torch.zeros_like(score_N, dtype=torch.bool).index_fill_(0, top_N, True)
        return keep_N & (score_N > 0), score_N

    def sparse_selected_(self, score_N: Tensor, keep_N: Tensor) -> None:
        self.update_threshold_(score_N, keep_N)

    @torch.no_grad()
    def update_threshold_(self, score_N: Tensor, keep_N: Tensor | None = None) -> None:
        """theta <- EMA (cfg.threshold_momentum) of the smallest kept score of a training batch
        (all of score_N, or where keep_N); the first batch sets it, a batch that kept nothing
        leaves it. No host sync."""
        if score_N.numel() == 0:
            return
        thr, mom = self.threshold, self.cfg.threshold_momentum
        m = (score_N if keep_N is None else torch.where(keep_N, score_N, float("inf"))).min()
        m = m.float()
        new = torch.where(thr < 0, m, mom * thr + (1 - mom) * m)
        thr.copy_(new if keep_N is None else torch.where(keep_N.any(), new, thr))

    def encode(self, x_BD: Tensor) -> Tensor:
        if float(self.threshold) < 0:
            x2_BD = x_BD.reshape(-1, x_BD.shape[-1]).to(self.W_enc.dtype)
            rows, cols, vals, _ = self._batch_topk(x2_BD)
            acts_BF = vals.new_zeros(len(x2_BD), self.cfg.d_sae).index_put_((rows, cols), vals)
            return acts_BF.view(*x_BD.shape[:-1], -1)
        return self._thresholded(self.pre_acts(x_BD), x_BD)

    def activate(self, pre_BF: Tensor, x_BD: Tensor) -> Tensor:
        """pre * H(pre / r(x) - theta) (r = 1 for an absolute threshold); before a threshold is
        set (theta < 0), encode's batch rule, which reruns the encoder."""
        if float(self.threshold) < 0:
            return self.encode(x_BD)
        return self._thresholded(pre_BF, x_BD)

    def _thresholded(self, pre_BF: Tensor, x_BD: Tensor) -> Tensor:
        """The inference rule once theta is set (one host read of theta per encode, in encode)."""
        theta = self.threshold.to(pre_BF.dtype)
        r_B = self.input_rms(x_BD)
        if r_B is None:
            return pre_BF * (pre_BF > theta)
        return pre_BF * (pre_BF / r_B.to(pre_BF.dtype)[..., None] > theta)

    @torch.no_grad()
    def finish_training_(self, x_ND: Tensor, *, max_elements: int = 1 << 26) -> None:
        """theta <- the batch rule's threshold on the sample: the smallest kept score when the
        top N*k scores of N tokens are kept (on at most max_elements / F tokens), so that
        inference keeps k latents per token on average, as training did.

        Why: the EMA of per-batch minima (momentum 0.99, a time constant of ~100 steps) lags
        the pre-activations while they still move, and a short run ends with the threshold too
        high: inference L0 ~22 for k = 32 after 293 steps on SmolLM2 activations, both score
        rules. The EMA stays the threshold used during training."""
        n = max(1, min(len(x_ND), max_elements // self.cfg.d_sae))
        x_BD = x_ND[:n].to(self.W_enc.device, self.W_enc.dtype)
        rows_N, _, pre_N, _ = self._batch_topk(x_BD)
        if pre_N.numel():
            r_B = self.input_rms(x_BD)
            self.threshold.fill_(float((pre_N if r_B is None else pre_N / r_B[rows_N]).min()))

    @torch.no_grad()
    def fold_input_scale_(self, scale: float, target_scale: float | None = None) -> None:
        """As SAE.fold_input_scale_; r(x) becomes r(c x) / c (c the input scale), so a relative
        theta becomes c theta (an unset threshold stays -1)."""
        super().fold_input_scale_(scale, target_scale)
        if self.cfg.relative_threshold and float(self.threshold) >= 0:
            self.threshold.mul_(scale)

    def reconstruction_terms(
        self, x_BD: Tensor, y_BD: Tensor, pattern: kernels.SparsePattern, vals_N: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(x_hat_BD, loss, losses) of the kept codes: x_hat = z @ W_dec + b_dec (+ the skip
        term) and the reconstruction loss ||y - x_hat||^2 (per token, mean over the batch; y the
        input x, or a transcoder's target), logged as "mse"."""
        x_hat_BD = kernels.sparse_decode(pattern, vals_N, self.W_dec) + self.b_dec
        x_hat_BD = self.add_skip(x_BD, x_hat_BD)
        mse = (x_hat_BD - y_BD).pow(2).sum(-1).mean()
        return x_hat_BD, mse, {"mse": mse}

    def training_forward(
        self, x_BD, *, target_BD=None, sparsity_scale=1.0, dead_mask_F=None
    ) -> TrainOutput:
        cfg = self.cfg
        x_BD = x_BD.to(self.W_enc.dtype)
        y_BD = x_BD if target_BD is None else target_BD.to(x_BD.dtype)
        B = x_BD.shape[0]
        k_aux, aux_scale = aux_k(self, dead_mask_F)
        rows_N, cols_N, pre_N, aux = self._batch_topk(x_BD, dead_mask_F, k_aux)
        with torch.no_grad():
            r_B = self.input_rms(x_BD)
            self.update_threshold_(pre_N if r_B is None else pre_N / r_B[rows_N])
        pattern = kernels.SparsePattern.from_coo(rows_N, cols_N, B, cfg.d_sae)
        vals_N = torch.relu(
            kernels.select_preacts(x_BD, self.W_enc, self.b_enc, self.b_pre, pattern, pre_N)
        )
        x_hat_BD, loss, losses = self.reconstruction_terms(x_BD, y_BD, pattern, vals_N)
        if k_aux:
            losses["auxk"] = auxk_loss(self, x_BD, x_hat_BD, *aux, aux_scale, y_BD)
            loss = loss + cfg.aux_coeff * aux_weight(y_BD) * losses["auxk"]
        fired_F = torch.zeros(cfg.d_sae, dtype=torch.bool, device=x_BD.device)
        fired_F[cols_N] = True
        return self._output(y_BD, x_hat_BD, fired_F, torch.tensor(cols_N.numel() / B), losses, loss)
