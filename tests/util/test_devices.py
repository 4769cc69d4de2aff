"""util.devices: the device rule, and the CPU bf16 reading that picks the training dtype."""

import pytest
import torch

from saelens_lite.training import TrainConfig
from saelens_lite.training.hook_state import autocast_dtype
from saelens_lite.util.devices import CPU_BF16_ENV, cpu_has_native_bf16, resolve_device

CPU = torch.device("cpu")


def cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def test_the_reading_follows_the_cpu_flags_and_the_override(monkeypatch):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    assert cpu_has_native_bf16() == bool(cpuinfo_flags() & {"avx512_bf16", "amx_bf16"})
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert cpu_has_native_bf16()
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert not cpu_has_native_bf16()
    monkeypatch.setenv(CPU_BF16_ENV, "yes")
    with pytest.raises(ValueError, match=r"SAELENS_LITE_CPU_BF16='yes': use 1 .* or 0"):
        cpu_has_native_bf16()


@pytest.mark.parametrize("native", ["0", "1"])
def test_auto_trains_the_topk_family_in_bf16_on_a_cpu_with_native_bf16(native, monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, native)
    want = torch.bfloat16 if native == "1" else None
    for arch, kw in (("topk", {"k": 4}), ("batchtopk", {"k": 4}), ("matryoshka", {"k": 4})):
        assert autocast_dtype(TrainConfig.from_dict({"architecture": arch, **kw}), CPU) is want, arch
    for arch in ("relu", "jumprelu"):  # dense encoders: float32 on every CPU
        assert autocast_dtype(TrainConfig.from_dict({"architecture": arch}), CPU) is None, arch
    assert autocast_dtype(TrainConfig.from_dict({"architecture": "topk", "k": 4, "dtype": "float32"}), CPU) is None
    assert autocast_dtype(TrainConfig.from_dict({"architecture": "relu", "dtype": "bfloat16"}), CPU) is torch.bfloat16


def test_resolve_device_names_the_bad_value():
    assert resolve_device("cpu") == CPU
    with pytest.raises(ValueError, match="device='gpu0': use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")
