"""Builders of the circuits tests: tiny-llama and hand-set per-layer transcoders."""

import pytest
import torch

from saelens_lite.saes import SAE, SAEConfig


def make_transcoder(layer: int, *, d_in: int = 64, d_sae: int = 48, k: int = 3, skip: bool = False,
                    seed: int = 0, model_name: str = "tiny-llama", dtype: str = "float32",
                    hook: str | None = None) -> SAE:
    """A TopK transcoder of MLP ``layer`` with random (seeded) weights and biases."""
    cfg = SAEConfig.build(architecture="topk", d_in=d_in, d_sae=d_sae, k=k, skip=skip, dtype=dtype,
                    hook_name=hook or f"blocks.{layer}.hook_mlp_in",
                    target_hook=f"blocks.{layer}.hook_mlp_out", model_name=model_name)
    gen = torch.Generator().manual_seed(1000 * seed + layer)
    sae = SAE.from_config(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * (0.1 if p.ndim == 2 and
                                                                           p.shape[0] == p.shape[1] else 1.0))
    return sae


@pytest.fixture
def tiny64():
    """tiny-llama in float64 (the reconstruction identity holds to float64 precision)."""
    from saelens_lite.lm.load import load_model

    return load_model("tiny-llama", dtype=torch.float64)


@pytest.fixture
def transcoders():
    """Factory: {name: transcoder} for the given layers of tiny-llama."""

    def build(layers=range(4), **kw):
        return {f"tc{i}": make_transcoder(i, **kw) for i in layers}

    return build
