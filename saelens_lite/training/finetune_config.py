"""Configuration of end-to-end fine-tuning (:mod:`saelens_lite.training.finetune`): one
dataclass, a docstring per field, validated on construction (errors name the field, the value
and what is allowed)."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Literal

from saelens_lite.util.validate import check_ints

Loss = Literal["kl", "ce", "mse+kl"]
LOSSES: tuple[str, ...] = typing.get_args(Loss)
Decay = Literal["linear", "cosine", "none"]
Exclude = Literal["special", "bos", "none"]

# Fields that may change between an interrupted fine-tune and its resumption: where things are
# written and how they are reported, never the weights.
RESUME_FREE_FIELDS = frozenset({"out_dir", "resume", "log_every", "progress", "checkpoint_every",
                                "keep_checkpoints", "device", "wandb", "wandb_project", "wandb_name",
                                "wandb_mode"})


@dataclass
class FinetuneConfig:
    """How to fine-tune a trained SAE (or transcoder) on the frozen model's output."""

    # --- what to fine-tune ----------------------------------------------------------------
    sae: str = ""
    """Folder of the trained SAE or transcoder (cfg.json + sae.safetensors)."""
    loss: Loss = "kl"
    """kl: KL(p_clean || p_spliced) of the next-token distributions; ce: the spliced model's
    next-token cross-entropy; mse+kl: KL plus mse_coeff times the reconstruction FVU."""
    mse_coeff: float = 1.0
    """Weight of the reconstruction FVU in loss=mse+kl (Karvonen 2025 keep an MSE term beside
    the KL)."""
    tokens: int = 100_000
    """Fine-tuning tokens (contexts x context_size, special tokens included). Steps = tokens //
    (batch_contexts * context_size)."""

    # --- optimisation ---------------------------------------------------------------------
    lr: float = 1e-4
    """Adam learning rate, in the SAE's training units (inputs scaled to E||c x|| = sqrt(D),
    unit-norm decoder rows); docs/finetune.md has the sweep behind the default."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam (beta1, beta2)."""
    warmup_steps: int | None = None
    """Linear lr warm-up from 0 over this many steps. None: 5% of the steps."""
    decay: Decay = "linear"
    """Shape of the lr decay to 0 over the last decay_fraction of the steps."""
    decay_fraction: float = 0.2
    """Fraction of the steps (at the end) over which the lr decays to 0."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value (None: no clipping)."""

    # --- model and corpus -----------------------------------------------------------------
    model: str | None = None
    """Model (alias, HF id, folder or .gguf); None: the model named in the SAE's cfg.json."""
    dataset: str = "builtin:pydocs"
    """Corpus the contexts stream from (see corpus.iter_documents)."""
    text_column: str = "text"
    """Text column / key of the corpus."""
    context_size: int = 128
    """Tokens per packed context."""
    batch_contexts: int = 8
    """Contexts per optimiser step (one clean and one spliced forward each)."""
    contexts: int | None = None
    """Use only the first this many full contexts of the corpus, cycling over them (None: the
    whole corpus, cycling at its end). Set it to the contexts of the SAE's activation cache
    (activations=) so the evaluation's held-out contexts after them are never fine-tuned on."""
    activations: str | None = None
    """An activation cache folder: fine-tune only on the contexts it was harvested from (sets
    contexts; its corpus and context size must equal dataset and context_size), so that
    `saelens-lite eval` on that cache stays held out."""
    exclude: Exclude = "special"
    """Token positions left clean (not spliced) and out of the loss: the one token rule of
    lm.tokens, as in the evaluation."""

    # --- run ------------------------------------------------------------------------------
    seed: int = 0
    """Seed of every random choice (torch's global generator)."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto (CUDA when present)."""
    checkpoint_every: int = 50_000
    """Write a resumable checkpoint every this many tokens (0: never)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    log_every: int = 10
    """Steps between metric records (metrics.jsonl, progress bar)."""
    progress: bool = True
    """Show a progress bar."""
    wandb: bool = False
    """Log metrics to Weights & Biases."""
    wandb_project: str = "saelens_lite"
    """W&B project name."""
    wandb_name: str | None = None
    """W&B run name (default: the run folder's name)."""
    wandb_mode: str = "auto"
    """auto, online, offline or disabled (see TrainConfig.wandb_mode)."""
    out_dir: str = "runs/finetune"
    """Run folder: config.json, metrics.jsonl, checkpoints/ and the fine-tuned SAE in
    <hook>/ (the folder name train uses)."""
    resume: bool = False
    """Continue an interrupted fine-tune from the newest checkpoint in out_dir."""

    def __post_init__(self) -> None:
        self.betas = list(self.betas)
        if not isinstance(self.sae, str) or not self.sae:
            raise ValueError(f"sae={self.sae!r}: must name an SAE folder (cfg.json + sae.safetensors)")
        for name, hint in (("loss", Loss), ("decay", Decay), ("exclude", Exclude)):
            allowed = typing.get_args(hint)
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: choose one of {list(allowed)}")
        check_ints(self, ("tokens", "context_size", "batch_contexts", "keep_checkpoints", "log_every"),
                   minimum=1)
        check_ints(self, ("seed", "checkpoint_every"), minimum=0)
        if self.context_size < 2:
            raise ValueError(f"context_size={self.context_size}: must be at least 2 (a next token)")
        for name in ("warmup_steps",):
            if getattr(self, name) is not None:
                check_ints(self, (name,), minimum=0)
        if self.contexts is not None:
            check_ints(self, ("contexts",), minimum=1)
        if not (_finite(self.lr) and self.lr > 0):
            raise ValueError(f"lr={self.lr!r}: must be a finite number > 0")
        if not (_finite(self.mse_coeff) and self.mse_coeff >= 0):
            raise ValueError(f"mse_coeff={self.mse_coeff!r}: must be a finite number >= 0")
        if len(self.betas) != 2 or not all(_finite(b) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas={self.betas!r}: must be two numbers in [0, 1)")
        if not (_finite(self.decay_fraction) and 0 <= self.decay_fraction <= 1):
            raise ValueError(f"decay_fraction={self.decay_fraction!r}: must be in [0, 1]")
        if self.grad_clip is not None and not (_finite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"grad_clip={self.grad_clip!r}: must be > 0 or None")
        if self.tokens < self.batch_tokens:
            raise ValueError(f"tokens={self.tokens}: must be at least batch_contexts x context_size "
                             f"= {self.batch_tokens}")

    @property
    def batch_tokens(self) -> int:
        """Tokens per step: batch_contexts x context_size."""
        return self.batch_contexts * self.context_size

    @property
    def steps(self) -> int:
        """Optimiser steps: tokens // batch_tokens."""
        return self.tokens // self.batch_tokens

    @property
    def warmup(self) -> int:
        """Warm-up steps in effect: warmup_steps, or 5% of the steps when None."""
        return self.warmup_steps if self.warmup_steps is not None else self.steps // 20

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resume_mismatch(self, saved: dict) -> list[str]:
        """Fields that differ from a saved config and would change the weights."""
        mine = self.to_dict()
        return [k for k in mine if k not in RESUME_FREE_FIELDS and saved.get(k) != mine[k]]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


__all__ = ["FinetuneConfig", "LOSSES", "Loss"]
