"""`EvalConfig`: how `evaluate` measures an SAE (which rows, how many, which spliced-model
metrics, where to write). One dataclass, a docstring per field, validated on construction;
errors name the field, the value and what is allowed. The `eval` command's flags map onto it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from saelens_lite.lm.tokens import EXCLUDE_CHOICES, Exclude
from saelens_lite.util.validate import check_ints


@dataclass
class EvalConfig:
    """What `evaluate(sae, data, config, model=...)` measures and where it writes."""

    dataset: str | None = None
    """Corpus of the held-out contexts and the spliced-model loss (None: the cache's)."""
    hook: str | None = None
    """Cache hook to read (None: the SAE's hook; another hook of the same width warns)."""
    heldout_tokens: int | None = 16_384
    """Held-out tokens for the reconstruction metrics (needs a model; 0 or None: in-sample only)."""
    n_tokens: int | None = 200_000
    """Cached rows for the in-sample column (None: all)."""
    in_sample: bool = True
    """Also measure the in-sample column (the cache's rows) beside the held-out one."""
    batch_size: int = 1024
    """Tokens per SAE batch."""
    downstream: bool = True
    """Run the model with the SAE spliced in (CE loss recovered, KL; pooled cosine for encoders)."""
    ce_contexts: int = 16
    """Held-out contexts for the spliced-model metrics."""
    context_size: int | None = None
    """Tokens per context (None: the cache's, else 128)."""
    model_batch_size: int = 4
    """Contexts per model forward."""
    exclude: Exclude = "special"
    """Tokens left out of every metric and kept clean in the spliced model (lm.tokens): special
    (bos, eos, pad, sep, as SAEBench), bos or none."""
    dead_threshold: float = 0.0
    """Firing frequency at or below which a latent counts as dead."""
    dense_threshold: float = 0.1
    """Firing frequency above which a latent counts as dense."""
    device: str = "cpu"
    """cpu, cuda or cuda:N: where the SAE and the model run."""
    out_dir: str | Path | None = None
    """Also write metrics.json, summary.md and the density histogram here (None: nothing)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        check_ints(self, ("batch_size", "ce_contexts", "model_batch_size"), minimum=1)
        for name in ("heldout_tokens", "n_tokens"):
            if getattr(self, name) is not None:
                check_ints(self, (name,), minimum=0)
        if self.context_size is not None:
            check_ints(self, ("context_size",), minimum=1)
        if self.exclude not in EXCLUDE_CHOICES:
            raise ValueError(f"EvalConfig.exclude={self.exclude!r}: choose one of {list(EXCLUDE_CHOICES)}")
        for name in ("dead_threshold", "dense_threshold"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1):
                raise ValueError(f"EvalConfig.{name}={v!r}: must be a fraction in [0, 1]")
        for name in ("in_sample", "downstream", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"EvalConfig.{name}={getattr(self, name)!r}: must be True or False")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"EvalConfig.device={self.device!r}: must be cpu, cuda or cuda:N")

    @property
    def thresholds(self) -> dict[str, float]:
        """The density thresholds, as `ReconstructionStats.result` takes them."""
        return {"dead_threshold": self.dead_threshold, "dense_threshold": self.dense_threshold}


__all__ = ["EvalConfig"]
