"""Shared SAE base: the train output, parameters, save/load; the config is in saes/config.py,
the pieces every architecture uses once (decoder normalisation, AuxK, ...) in saes/terms.py.

Shape legend: B batch, D model width (d_in), F features (d_sae), K active features per token,
N tokens used for initialisation.

Every architecture computes   pre_BF = (x_BD - b_dec) @ W_enc + b_enc,
acts_BF = activation(pre_BF),  x_hat_BD = acts_BF @ W_dec + b_dec.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from saelens_lite import kernels
from saelens_lite.saes.config import FORMAT_VERSION, SAEConfig
from saelens_lite.saes.registry import REGISTRY, get_sae_class
from saelens_lite.saes.terms import (  # noqa: F401  (re-exported: saes.base was their home)
    aux_k,
    aux_k_full,
    aux_weight,
    auxk_loss,
    fvu,
    geometric_median,
    remove_parallel_grad_,
    unit_norm_rows_,
)


class TrainOutput(NamedTuple):
    loss: Tensor
    """Scalar to minimise: reconstruction + weighted sparsity/auxiliary terms."""
    x_hat_BD: Tensor
    """Reconstruction of the batch."""
    fired_F: Tensor
    """bool (F,): latents with a positive activation in this batch (dead-latent tracking)."""
    l0: Tensor
    """0-dim detached float: mean number of active latents per token."""
    fvu: Tensor
    """0-dim detached float: fraction of variance unexplained,
    sum ||x - x_hat||^2 / sum ||x - mean(x)||^2."""
    losses: dict[str, Tensor]
    """Named loss terms before weighting (mse, l1, l0, auxk, multi_topk_mse) and training
    statistics (JumpReLU's l0_multiplier), for logging."""
    inexact_rows: Tensor | None = None
    """The fast step with select="pruned": 0-dim int64, rows whose top-k may be inexact
    (saturated rows past the repair capacity, see kernels.triton_topk); None otherwise."""

    @property
    def mse(self) -> Tensor:
        """sum ||y - x_hat||^2 / B (y the target)."""
        return self.losses["mse"]

    @property
    def auxk(self) -> Tensor | None:
        """The unweighted AuxK term; None when the step had none (no dead mask)."""
        return self.losses.get("auxk")


class SparseOps(NamedTuple):
    """The fast step's kernels as `SAE.sparse_reconstruction` sees them (training/fast_step.py
    picks them per device: on CUDA with a compute dtype, 16-bit gathered rows)."""

    W_dec: Tensor
    """W_dec (detached) in the dtype of the rows the kernels gather."""
    cast: Callable[[Tensor], Tensor]
    """A dense operand of the kernels (an output gradient) to that dtype."""
    decode: Callable[[kernels.SparsePattern, Tensor], Tensor]
    """(pattern, vals_N) -> A(vals) @ W_dec in the values' dtype (the fast step's decode)."""
    out_dtype: torch.dtype
    """The parameters' dtype: the dtype of every gradient."""


class SparseRecon(NamedTuple):
    """The reconstruction terms of a fast step and their gradients (`SAE.sparse_reconstruction`)."""

    x_hat_BD: Tensor
    """The full reconstruction (FVU, AuxK's residual), detached."""
    loss: Tensor
    """The reconstruction terms of the loss (0-dim, detached)."""
    losses: dict[str, Tensor]
    """Named terms for logging, "mse" the full reconstruction's (detached)."""
    grad_vals_N: Tensor
    """dL/dz at each entry of the pattern (before the fast step's keep mask)."""
    grad_out_BD: Tensor
    """sum over the reconstructions of dL/dx_hat (B, D); its row sum is dL/db_dec's direct part."""
    grad_W_dec: Tensor | None
    """dL/dW_dec; None: A(z)^T grad_out_BD on the pattern, which the fast step computes in
    one pass with the encoder's product (one reconstruction)."""


# ---------------------------------------------------------------- the base class
class SAE(nn.Module):
    """Sparse autoencoder with raw parameters W_enc (D, F), b_enc (F,), W_dec (F, D), b_dec (D,).

    Subclasses (one per architecture, registered by name) define `encode` and
    `training_forward`; `unit_norm_decoder` says whether decoder rows are kept at unit norm.
    Init: W_dec rows random directions of norm cfg.decoder_start_norm (1 but for the k-sparse
    configs' decoder_init_norm), W_enc = W_dec^T (Gao et al. 2024), b_enc = b_dec = 0.
    `unit_norm_decoder` (the class's, and not cfg.free_decoder) keeps the rows at unit norm.
    W_enc is column-major (W_enc.T is contiguous); any layout works, this one is fastest.
    """

    architecture: str = ""
    # The dataclass of this architecture's config (saes/config.py: SAEConfig or a subclass
    # beside the class); SAEConfig.build(architecture=name, ...) and SAE.load build it.
    config_class: type[SAEConfig] = SAEConfig
    unit_norm_decoder: bool = True
    uses_k: bool = False  # whether cfg.k matters (then it must be <= d_sae)
    # A sparse coder: latents that are sparse codes of the input, one direction each (W_dec's
    # rows), which interventions, dashboards and explanations read. False for the baselines
    # (dense, denoising, vae, conv): autoencoders of the comparison, not dictionaries; a call
    # site that needs an SAE checks it (`require_sparse_coder`).
    is_sparse_coder: bool = True
    # False for models that are not one (D, F) linear map per token (the conv baseline: its
    # (B, S, D) input is a sequence); tests of the token-wise SAE contract skip them.
    tokenwise: bool = True
    # Whether cfg.target_hook may be set (a transcoder: input and target differ); the sparse
    # architectures, whose training_forward takes target_BD.
    supports_transcoder: bool = False
    # Whether training/fast_step.py's closed-form sparse gradients cover this architecture (for
    # the SAEConfig fields that `fast_step_supports` accepts); the trainer and TrainConfig read
    # it. Such a class defines the fast step's per-architecture methods (`sparse_*`).
    supports_fast_step: bool = False
    # Whether each row's active latents are its own k largest pre-activations (TopK), so its
    # codes grow with its norm (above the biases) without more latents firing. The trainer's
    # outlier-row clipping (TrainConfig.outlier_norm_ratio) is for these only: a threshold
    # (BatchTopK at inference, JumpReLU, ReLU's bias) learnt on capped rows lets hundreds of
    # latents fire on the full-norm row (SmolLM2 blocks.14, BatchTopK: L0 424 on a 116x row).
    rank_selected: bool = False
    # Whether the fast step's backward="dense" (GEMMs over the code matrix) computes this
    # class's reconstruction: it has the one reconstruction of `SAE.sparse_reconstruction`.
    fast_step_dense_backward: bool = True

    @classmethod
    def fast_step_supports(cls, options: Mapping[str, object]) -> bool:
        """Whether the fast step trains this architecture with these SAEConfig fields (not a
        transcoder: the fast step reconstructs the input)."""
        return cls.supports_fast_step and not options.get("target_hook")

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        if not isinstance(cfg, self.config_class):
            raise ValueError(f"{type(self).__name__} needs a {self.config_class.__name__} "
                             f"(SAEConfig.build(architecture={self.architecture!r}, ...)); got "
                             f"{type(cfg).__name__}(architecture={cfg.architecture!r})")
        require_sized(cfg)
        self.cfg = cfg
        D, F_, dt = cfg.d_in, cfg.d_sae, cfg.torch_dtype
        # The k-sparse configs (saes/terms.AuxKConfig) may free the decoder's row norms and
        # start them below 1; an instance attribute, so the class's value stays the default.
        self.unit_norm_decoder = type(self).unit_norm_decoder and not cfg.free_decoder
        W_dec = torch.randn(F_, D, dtype=torch.float32)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        W_dec *= cfg.decoder_start_norm
        self.W_dec = nn.Parameter(W_dec.to(dt))
        # (D, F) as the contract says, stored as the transpose of a contiguous (F, D) tensor:
        # each latent's encoder column is contiguous, so the sparse backward writes whole rows
        # and the gradient already has the parameter's layout (no copy in AccumulateGrad).
        self.W_enc = nn.Parameter(W_dec.clone().to(dt).T)
        self.b_enc = nn.Parameter(torch.zeros(F_, dtype=dt))
        self.b_dec = nn.Parameter(torch.zeros(D, dtype=dt))
        if cfg.target_hook and not self.supports_transcoder:
            raise ValueError(f"SAEConfig.target_hook={cfg.target_hook!r} is invalid for "
                             f"architecture {cfg.architecture!r}; allowed: '' (transcoders: "
                             f"{sorted(n for n, c in REGISTRY.items() if c.supports_transcoder)})")
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(D, D, dtype=dt))

    @property
    def is_transcoder(self) -> bool:
        """Whether the target is another hook's activations (cfg.target_hook), not the input."""
        return bool(self.cfg.target_hook)

    @property
    def b_pre(self) -> Tensor:
        """What the encoder subtracts from its input: b_dec for an SAE, zero for a transcoder
        (whose b_dec is in the target space)."""
        return torch.zeros_like(self.b_dec) if self.is_transcoder else self.b_dec

    def add_skip(self, x_BD: Tensor, dec_BD: Tensor) -> Tensor:
        """dec + x @ W_skip with cfg.skip (a transcoder's linear skip connection), else dec."""
        if not self.cfg.skip:
            return dec_BD
        return dec_BD + x_BD.to(self.W_skip.dtype) @ self.W_skip

    # -- inference
    def pre_acts(self, x_BD: Tensor) -> Tensor:
        """(x - b_pre) @ W_enc + b_enc for any leading shape (..., D) -> (..., F)."""
        x2_BD = x_BD.reshape(-1, x_BD.shape[-1]).to(self.W_enc.dtype)
        return kernels.dense_preacts(x2_BD, self.W_enc, self.b_enc, self.b_pre).view(
            *x_BD.shape[:-1], -1
        )

    def encode(self, x_BD: Tensor) -> Tensor:
        raise NotImplementedError

    def activate(self, pre_BF: Tensor, x_BD: Tensor) -> Tensor:
        """encode(x_BD) given pre_BF = pre_acts(x_BD): the activation rule alone, for a caller that
        needs both the pre-activations and the codes from one encoder matmul. This default
        recomputes encode(x_BD); the sparse coders apply their rule to pre_BF."""
        return self.encode(x_BD)

    def encode_sparse(self, x_BD: Tensor) -> tuple[Tensor, Tensor]:
        """(vals_BK, idx_BK) with K = the largest number of active latents in any row."""
        acts_BF = self.encode(x_BD)
        k = max(int((acts_BF != 0).sum(-1).max()), 1) if acts_BF.numel() else 1
        return acts_BF.topk(k, dim=-1)

    def decode(self, acts_BF: Tensor) -> Tensor:
        """acts @ W_dec + b_dec. A transcoder with cfg.skip adds x @ W_skip, which needs the
        input: `forward(x)` (or `add_skip(x, decode(acts))`) is its full reconstruction."""
        return acts_BF @ self.W_dec + self.b_dec

    def forward(self, x_BD: Tensor) -> Tensor:
        """The reconstruction of the target (the input for an SAE), skip term included."""
        return self.add_skip(x_BD, self.decode(self.encode(x_BD)))

    # -- training
    def training_forward(
        self,
        x_BD: Tensor,
        *,
        target_BD: Tensor | None = None,
        sparsity_scale: float = 1.0,
        dead_mask_F: Tensor | None = None,
    ) -> TrainOutput:
        """Loss and statistics of a batch; the loss reconstructs target_BD (default x_BD; a
        transcoder's target hook) and FVU and mse are against it."""
        raise NotImplementedError

    def _output(
        self, y_BD, x_hat_BD, fired_F, l0, losses: dict[str, Tensor], loss: Tensor
    ) -> TrainOutput:
        """y_BD: the reconstruction target."""
        return TrainOutput(
            loss,
            x_hat_BD,
            fired_F,
            torch.as_tensor(l0, dtype=torch.float32).detach(),
            fvu(y_BD, x_hat_BD, losses.get("mse")),
            losses,
        )

    # -- the fast step's per-architecture parts (training/fast_step.py; supports_fast_step)
    def sparse_candidates(self) -> int:
        """K: latents per token the fast step selects by pre-activation, its candidates."""
        raise NotImplementedError(f"{self.architecture!r} has no fast step (supports_fast_step)")

    def sparse_keep(self, x_BD: Tensor, pre_BK: Tensor) -> tuple[Tensor, Tensor]:
        """(keep_N, score_N), N = B*K: which candidates (pre_BK, each row's top K in any order)
        are active, and the scores they were ranked by. No host sync (CUDA graphs)."""
        raise NotImplementedError(f"{self.architecture!r} has no fast step (supports_fast_step)")

    def sparse_reconstruction(
        self, x_BD: Tensor, pattern: kernels.SparsePattern, vals_N: Tensor, ops: SparseOps
    ) -> SparseRecon:
        """The reconstruction terms of the fast step and their closed-form gradients in the codes
        z (vals_N at `pattern`, the kept candidates; inactive entries hold 0) and in W_dec. Here
        one reconstruction (TopK, BatchTopK; Gao et al. 2024):
            x_hat = A(z) W_dec + b_dec,   L = ||x_hat - x||^2 / B,   g = 2 (x_hat - x) / B,
            dL/dz_n = <g[b_n], W_dec[f_n]>,   dL/dW_dec = A(z)^T g  (grad_W_dec None: the fast
        step pairs it with the encoder's product). No autograd, no host sync."""
        B = x_BD.shape[0]
        x_hat_BD = ops.decode(pattern, vals_N) + self.b_dec.detach()
        err_BD = x_hat_BD - x_BD
        mse = err_BD.pow(2).sum() / B
        g_BD = err_BD * (2.0 / B)
        gz_N = pattern.sampled_dot(ops.cast(g_BD), ops.W_dec)
        return SparseRecon(x_hat_BD, mse, {"mse": mse}, gz_N, g_BD, None)

    def sparse_selected_(self, score_N: Tensor, keep_N: Tensor) -> None:
        """Called once a fast step has its gradients, with its selection: what the architecture
        tracks from it (BatchTopK: its threshold). Nothing here."""

    def lr_scales(self) -> dict[str, float]:
        """Learning rate multipliers of named parameters (the others get 1); the trainer gives
        each its own Adam parameter group."""
        return {}

    def before_optimizer_step_(self) -> None:
        if self.unit_norm_decoder:
            remove_parallel_grad_(self.W_dec)

    def after_optimizer_step_(self) -> None:
        if self.unit_norm_decoder:
            unit_norm_rows_(self.W_dec.data)

    def training_state(self) -> dict[str, Tensor]:
        """Training-only state outside the parameters (the trainer's checkpoints carry it, the
        saved SAE does not): nothing here; JumpReLU's adaptive sparsity weight."""
        return {}

    @torch.no_grad()
    def load_training_state_(self, state: dict[str, Tensor]) -> None:
        mine = self.training_state()
        for name, t in state.items():
            if name not in mine:
                raise ValueError(f"{self.architecture} SAE has no training state {name!r}; "
                                 f"it has {sorted(mine)}")  # fmt: skip
            mine[name].copy_(t)

    @torch.no_grad()
    def init_from_data_(self, x_ND: Tensor, target_ND: Tensor | None = None) -> None:
        """Set b_dec from a data sample per cfg.b_dec_init (geometric median: Gao et al. 2024):
        a sample of the target (target_ND; x_ND when None, as for an SAE). Then b_enc per
        cfg.b_enc_init: centre sets b_enc = -mean_n(x_n - b_pre) W_enc, which makes every
        latent's pre-activation average zero over the sample (auto: for transcoders only). Last,
        W_dec per cfg.decoder_init (auto: from the codes for transcoders only)."""
        x = (x_ND if target_ND is None else target_ND).to(self.b_dec.device, torch.float32)
        if self.cfg.b_dec_init == "geometric_median":
            self.b_dec.copy_(geometric_median(x))
        elif self.cfg.b_dec_init == "mean":
            self.b_dec.copy_(x.mean(0))
        mode = self.cfg.b_enc_init
        if mode == "centre" or (mode == "auto" and self.is_transcoder):
            mean_D = x_ND.to(self.W_enc.device, torch.float64).mean(0) - self.b_pre.double()
            self.b_enc.copy_(-(mean_D @ self.W_enc.double()))
        if self.cfg.decoder_init == "codes" or (self.cfg.decoder_init == "auto" and self.is_transcoder):
            self.init_decoder_from_codes_(x_ND, x_ND if target_ND is None else target_ND)

    @torch.no_grad()
    def init_decoder_from_codes_(self, x_ND: Tensor, y_ND: Tensor, *, chunk_rows: int = 1024) -> None:
        """W_dec_f = c s_f / ||s_f||,  s_f = sum_n z_nf (y_n - b_dec),  z = encode(x) with the
        current encoder, c = cfg.decoder_start_norm (cfg.decoder_init="codes"): each latent
        writes the direction its target takes on the tokens where it fires, so the main loss's
        gradient on its codes, -<y - y_hat, W_dec_f>, starts by raising them rather than
        switching it off. Rows of latents that never fire on the sample keep their value."""
        dev = self.W_dec.device
        s_FD = torch.zeros(self.W_dec.shape, dtype=torch.float64, device=dev)
        for i in range(0, x_ND.shape[0], chunk_rows):
            vals_NK, idx_NK = self.encode_sparse(x_ND[i : i + chunk_rows].to(dev))
            r_ND = y_ND[i : i + chunk_rows].to(dev, torch.float64) - self.b_dec.double()
            K = idx_NK.shape[-1]
            s_FD.index_add_(0, idx_NK.reshape(-1),
                            vals_NK.double().reshape(-1, 1) * r_ND.repeat_interleave(K, dim=0))
        norm_F = s_FD.norm(dim=1) / self.cfg.decoder_start_norm
        ok_F = norm_F > 0
        self.W_dec[ok_F] = (s_FD[ok_F] / norm_F[ok_F, None]).to(self.W_dec.dtype)

    @torch.no_grad()
    def finish_training_(self, x_ND: Tensor) -> None:
        """Called by the trainer once the last step has run, with a sample of training inputs
        (in training units, before fold_input_scale_): set what inference needs from data.
        Nothing here; BatchTopK calibrates its threshold."""

    @torch.no_grad()
    def fold_input_scale_(self, scale: float, target_scale: float | None = None) -> None:
        """Make an SAE trained on c*x work on raw x: pre-activations (and so activations and
        thresholds) stay the same, the reconstruction is divided by c:
            (x - b_dec/c) @ (c W_enc) = (c x - b_dec) @ W_enc,
            x_hat' = acts (W_dec / c) + b_dec / c = x_hat(c x) / c.
        A transcoder trained on (c_in x, c_out y) (scale, target_scale): x @ (c_in W_enc) =
        (c_in x) @ W_enc, and W_dec / c_out, b_dec / c_out, W_skip c_in / c_out give
        x_hat' = x_hat(c_in x) / c_out. An SAE has one scale (b_dec is also its pre-bias)."""
        c_out = scale if target_scale is None else target_scale
        if c_out != scale and not self.is_transcoder:
            raise ValueError(f"fold_input_scale_: target_scale={target_scale!r} is invalid for an "
                             f"SAE (no cfg.target_hook); allowed: None or scale={scale!r}")
        self.W_enc.mul_(scale)
        self.W_dec.div_(c_out)
        self.b_dec.div_(c_out)
        if self.cfg.skip:
            self.W_skip.mul_(scale / c_out)

    # -- persistence
    def save(self, path: str | pathlib.Path) -> pathlib.Path:
        """Write folder `path`: cfg.json (architecture, format_version) + sae.safetensors."""
        path = pathlib.Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg = self.cfg.to_dict() | {
            "architecture": self.architecture,
            "format_version": FORMAT_VERSION,
        }
        (path / "cfg.json").write_text(json.dumps(cfg, indent=2))
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
            str(path / "sae.safetensors"),
        )
        return path

    @staticmethod
    def load(path: str | pathlib.Path, *, device: str | torch.device = "cpu") -> SAE:
        """Load any registered architecture from a folder written by `save`."""
        path = pathlib.Path(path)
        cfg = SAEConfig.from_dict(json.loads((path / "cfg.json").read_text()))
        sae = SAE.from_config(cfg)
        sae.load_state_dict(load_file(str(path / "sae.safetensors")), strict=True)
        return sae.to(device)

    @staticmethod
    def from_config(cfg: SAEConfig) -> SAE:
        """The registered class of cfg.architecture built from a sized config."""
        require_sized(cfg)
        return get_sae_class(cfg.architecture)(cfg)


def require_sparse_coder(model: nn.Module, what: str) -> None:
    """A clear error where a baseline autoencoder is given to code that needs a sparse coder
    (`SAE.is_sparse_coder`, read from the class)."""
    if not getattr(type(model), "is_sparse_coder", False):
        sparse = sorted(n for n, c in REGISTRY.items() if c.is_sparse_coder)
        raise ValueError(f"{what} needs a sparse coder; got {type(model).__name__} (architecture "
                         f"{getattr(model, 'architecture', '?')!r}, a baseline autoencoder); "
                         f"allowed: {sparse}")


def require_sized(cfg: SAEConfig) -> None:
    """An SAE needs d_in and d_sae (0 is a template not sized yet: TrainConfig.sae)."""
    if not cfg.sized:
        raise ValueError(f"SAEConfig.d_in={cfg.d_in}, d_sae={cfg.d_sae} is invalid for an SAE; "
                         "allowed: both >= 1 (0 is a config not sized yet)")
