"""Shared fixtures: offline mode, tiny random-init models, the real SmolLM2 (slow tests)."""

import os

import pytest

# Set before any test module imports transformers, which reads these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session", autouse=True)
def offline():
    """Never reach the HF hub from tests."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    yield
    mp.undo()


@pytest.fixture
def tiny_llama():
    from saelens_lite.lm.load import load_model

    return load_model("tiny-llama")


@pytest.fixture
def tiny_gpt2():
    from saelens_lite.lm.load import load_model

    return load_model("tiny-gpt2")


@pytest.fixture
def tiny_bert():
    from saelens_lite.lm.load import load_model

    return load_model("tiny-bert")


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct; the first run ever converts its GGUF (~25 s)."""
    from saelens_lite.lm.load import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny shapes: OpenMP fork/join overhead dominates (and stalls when the CPUs are shared).
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
