"""Device names -> ``torch.device``: one rule for every entry point."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``,
    with an error that names the bad value and the valid forms."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device={device!r}: use auto, cpu, cuda or cuda:N") from e
