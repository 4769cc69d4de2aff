"""Fixtures of the circuits tests: tiny-llama in float64 and hand-set per-layer transcoders
(``helpers.make_transcoder``)."""

import pytest
import torch
from helpers import make_transcoder


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
