"""The schedules of a run: the learning rate and the sparsity-coefficient warm-up at each step.

Pure functions of the step, so resume needs only the step.
"""

from __future__ import annotations

import math

from saelens_lite.training.config import TrainConfig


def lr_at(step: int, config: TrainConfig, base_lr: float) -> float:
    """Learning rate of step ``step`` (0-based) out of ``T = config.steps``.

    warm-up: ``w = min(1, (step + 1) / W)`` with ``W = config.warmup`` (1 when ``W == 0``);
    decay over the last ``n = round(decay_fraction * T)`` steps, with ``p = (step - (T - n)) / n``:
    linear ``1 - p``, cosine ``(1 + cos(pi p)) / 2`` (1 before the decay starts or with
    ``decay="none"``). ``lr = base_lr * w * decay``.
    """
    T = config.steps
    w = min(1.0, (step + 1) / config.warmup) if config.warmup else 1.0
    n = round(config.decay_fraction * T)
    d = 1.0
    if config.decay != "none" and n > 0 and step >= T - n:
        p = (step - (T - n)) / n
        d = 1.0 - p if config.decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
    return base_lr * w * d


def sparsity_scale_at(step: int, config: TrainConfig) -> float:
    """Multiplier of the sparsity coefficient: ``min(1, (step + 1) / sparsity_warmup_steps)``."""
    if not config.sparsity_warmup_steps:
        return 1.0
    return min(1.0, (step + 1) / config.sparsity_warmup_steps)


__all__ = ["lr_at", "sparsity_scale_at"]
