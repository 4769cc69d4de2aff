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


CPU_BF16_ENV = "SAELENS_LITE_CPU_BF16"
"""Environment variable that overrides :func:`cpu_has_native_bf16` (``1`` / ``0``)."""

_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively: AVX512-BF16 (``vdpbf16ps``) or AMX-BF16 tiles,
    read from the ``flags`` line of ``/proc/cpuinfo`` (False where there is none: other systems).
    Without them oneDNN emulates bf16 matmuls through float32 and they are slower, not faster.
    ``SAELENS_LITE_CPU_BF16=1`` / ``=0`` overrides the reading."""
    import os

    forced = os.environ.get(CPU_BF16_ENV)
    if forced is not None:
        if forced not in ("0", "1"):
            raise ValueError(f"{CPU_BF16_ENV}={forced!r}: use 1 (bf16 on the CPU) or 0 (float32)")
        return forced == "1"
    return _cpuinfo_has(_BF16_FLAGS)


def _cpuinfo_has(flags: tuple[str, ...]) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return any(fl in have for fl in flags)
    except OSError:
        pass
    return False
