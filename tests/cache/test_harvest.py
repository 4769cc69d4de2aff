"""Harvesting: rows match an independent Hugging Face forward, exclusions, exact resume after
kill -9, and bad input leaving nothing behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from saelens_lite.cache import ActivationCache
from saelens_lite.cache.harvest import HarvestConfig, harvest
from saelens_lite.lm.hooks import UnknownHookError
from saelens_lite.lm.load import load_model

HERE = Path(__file__).parent
TEXT = (
    "The quick brown fox jumps over the lazy dog. Sparse autoencoders find features in activations.\n\n"
    "A second paragraph talks about tokens, contexts and caches written to disk atomically.\n\n"
) * 40


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return str(path)


def _contexts_from_cache(cache: ActivationCache, tokenizer) -> dict[int, np.ndarray]:
    """Each cached context, packed again from the corpus (an independent path to the model's
    input); the stored token ids must be those of the packed context at the stored positions."""
    from saelens_lite.corpus.text import iter_documents, pack_contexts

    meta = cache.meta
    wanted = set(np.unique(cache.context_ids).tolist())
    ctx = {}
    packed = pack_contexts(iter_documents(meta["corpus"], text_column=meta["text_column"]), tokenizer,
                           meta["context_size"])
    for c, ids in enumerate(packed):
        if c > max(wanted):
            break
        if c in wanted:
            rows = cache.context_ids == c
            np.testing.assert_array_equal(cache.token_ids[rows], ids[cache.positions[rows]])
            ctx[c] = np.asarray(ids, dtype=np.int64)
    return ctx


def test_harvest_rows_equal_plain_forward_hidden_states(tmp_path, corpus):
    lm = load_model("tiny-llama")
    hooks = ["blocks.0.hook_resid_pre", "blocks.2.hook_resid_post"]
    cfg = HarvestConfig(model="tiny-llama", hooks=hooks, dataset=corpus, context_size=24, tokens=300,
                        batch_size=4, shard_tokens=128, device="cpu")
    cache = harvest(cfg, tmp_path / "c", model=lm, progress=False)
    assert cache.n_tokens == 300 and sorted(cache.hook_names) == sorted(hooks)
    assert (cache.positions > 0).all(), "BOS positions are excluded by default"

    acts0 = np.asarray(cache.activations(hooks[0])[:])
    acts2 = np.asarray(cache.activations(hooks[1])[:])
    for c, ids in _contexts_from_cache(cache, lm.tokenizer).items():
        with torch.no_grad():
            hs = lm.model(torch.as_tensor(ids)[None], output_hidden_states=True).hidden_states
        rows = np.flatnonzero(cache.context_ids == c)
        pos = cache.positions[rows]
        np.testing.assert_allclose(acts0[rows], hs[0][0, pos].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(acts2[rows], hs[3][0, pos].numpy(), rtol=1e-4, atol=1e-4)


def test_mlp_in_and_mlp_out_harvested_in_one_forward_are_an_mlp_input_output_pair(tmp_path, corpus):
    lm = load_model("tiny-gpt2")
    hooks = ["blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"]
    cfg = HarvestConfig(model="tiny-gpt2", hooks=hooks, dataset=corpus, context_size=16, tokens=90,
                        batch_size=3, device="cpu")
    cache = harvest(cfg, tmp_path / "c", model=lm, progress=False)
    x = torch.from_numpy(np.asarray(cache.activations(hooks[0])[:]))
    y = torch.from_numpy(np.asarray(cache.activations(hooks[1])[:]))
    with torch.no_grad():
        torch.testing.assert_close(lm.model.transformer.h[1].mlp(x), y, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(x, torch.from_numpy(np.asarray(cache.activations(hooks[2])[:])))


def test_exclude_none_keeps_bos_and_exact_token_count(tmp_path, corpus):
    cfg = HarvestConfig(model="tiny-gpt2", hooks=["blocks.1.hook_resid_post"], dataset=corpus, context_size=16,
                        tokens=101, batch_size=3, exclude="none", device="cpu")
    cache = harvest(cfg, tmp_path / "c", progress=False)
    assert cache.n_tokens == 101
    assert (cache.positions == 0).sum() == len(np.unique(cache.context_ids))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_overlapped_writer_path_writes_the_same_cache_as_the_plain_loop(tmp_path, corpus, dtype):
    """The GPU path (rows gathered by index, copied into reused host buffers, appended by a
    writer thread while the next batch runs) exercised on the CPU: byte-identical shards."""
    lm = load_model("tiny-llama")
    cfg = HarvestConfig(model="tiny-llama", hooks=["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"],
                        dataset=corpus, context_size=16, tokens=333, batch_size=3, shard_tokens=64,
                        dtype=dtype, device="cpu")
    plain = harvest(cfg, tmp_path / "plain", model=lm, progress=False, overlap=False)
    over = harvest(cfg, tmp_path / "over", model=lm, progress=False, overlap=True)
    assert over.n_tokens == plain.n_tokens == 333 and over.complete
    files = sorted(p.relative_to(tmp_path / "plain") for p in (tmp_path / "plain").rglob("*.npy"))
    assert len(files) > 4
    for rel in files:
        assert (tmp_path / "over" / rel).read_bytes() == (tmp_path / "plain" / rel).read_bytes(), rel


def test_overlapped_writer_raises_a_write_error_in_the_harvesting_thread(tmp_path, corpus, monkeypatch):
    from saelens_lite.cache import CacheWriter

    def broken(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(CacheWriter, "append", broken)
    cfg = HarvestConfig(model="tiny-llama", hooks=["blocks.1.hook_resid_post"], dataset=corpus,
                        context_size=16, tokens=200, batch_size=2, device="cpu")
    with pytest.raises(OSError, match="disk full"):
        harvest(cfg, tmp_path / "c", progress=False, overlap=True)


def test_complete_cache_is_not_rewritten_and_other_settings_refused(tmp_path, corpus):
    cfg = HarvestConfig(model="tiny-llama", hooks=["blocks.1.hook_resid_post"], dataset=corpus, context_size=16,
                        tokens=50, device="cpu")
    harvest(cfg, tmp_path / "c", progress=False)
    manifest = (tmp_path / "c" / "manifest.json").read_text()
    harvest(cfg, tmp_path / "c", progress=False)
    assert (tmp_path / "c" / "manifest.json").read_text() == manifest
    other = HarvestConfig(**{**cfg.__dict__, "context_size": 32})
    with pytest.raises(ValueError, match="context_size"):
        harvest(other, tmp_path / "c", progress=False)


def test_bad_hook_or_corpus_leaves_nothing_behind(tmp_path, corpus):
    with pytest.raises(UnknownHookError, match="blocks.1.hook_resid_post"):
        harvest(HarvestConfig(model="tiny-llama", hooks=["blocks.1.hook_resid_pots"], dataset=corpus),
                tmp_path / "a", progress=False)
    with pytest.raises((ValueError, FileNotFoundError), match="nope.txt"):
        harvest(HarvestConfig(model="tiny-llama", hooks=["blocks.1.hook_resid_post"],
                              dataset=str(tmp_path / "nope.txt")), tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="dtype='float8'"):
        HarvestConfig(dtype="float8")
    with pytest.raises(ValueError, match="exclude"):
        HarvestConfig(exclude="eos")
    with pytest.raises(ValueError, match="tokens=0"):
        HarvestConfig(tokens=0)


def _committed_shards(path: Path) -> int:
    try:
        return len(json.loads((path / "manifest.json").read_text())["shards"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


@pytest.mark.slow  # starts a process
def test_kill_9_then_resume_equals_uninterrupted_run(tmp_path, corpus):
    worker = [sys.executable, str(HERE / "_harvest_worker.py")]
    # keep the caller's PYTHONPATH (a worktree's checkout) ahead of the installed package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(HERE.parent)]))}
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    subprocess.run([*worker, str(ref), corpus, "0"], check=True, env=env, timeout=300)

    proc = subprocess.Popen([*worker, str(crashed), corpus, "0.3"], env=env)
    deadline = time.time() + 120
    while _committed_shards(crashed) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the worker finished before it could be killed; slow it down"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = ActivationCache(crashed)
    assert 0 < partial.n_tokens < 600 and not partial.complete

    subprocess.run([*worker, str(crashed), corpus, "0"], check=True, env=env, timeout=300)
    a, b = ActivationCache(ref), ActivationCache(crashed)
    assert a.n_tokens == b.n_tokens == 600 and b.complete
    np.testing.assert_array_equal(a.token_ids, b.token_ids)
    np.testing.assert_array_equal(a.context_ids, b.context_ids)
    np.testing.assert_array_equal(a.positions, b.positions)
    for hook in a.hook_names:
        np.testing.assert_array_equal(np.asarray(a.activations(hook)[:]), np.asarray(b.activations(hook)[:]))
    b.verify()


@pytest.mark.slow
def test_smollm2_harvest_matches_output_hidden_states(tmp_path, smollm2):
    cfg = HarvestConfig(model="smollm2-135m", hooks=["blocks.3.hook_resid_post", "blocks.9.hook_resid_post"],
                        dataset="builtin:pydocs", context_size=64, tokens=400, batch_size=4, device="cpu")
    cache = harvest(cfg, tmp_path / "c", model=smollm2, progress=False)
    assert cache.n_tokens == 400
    contexts = _contexts_from_cache(cache, smollm2.tokenizer)
    ids = torch.as_tensor(np.stack([contexts[c] for c in sorted(contexts)][:6]))
    with torch.no_grad():
        hs = smollm2.model(ids, output_hidden_states=True).hidden_states
    for hook, layer in (("blocks.3.hook_resid_post", 4), ("blocks.9.hook_resid_post", 10)):
        acts = np.asarray(cache.activations(hook)[:])
        for row, c in enumerate(sorted(contexts)[:6]):
            rows = np.flatnonzero(cache.context_ids == c)
            np.testing.assert_allclose(acts[rows], hs[layer][row, cache.positions[rows]].numpy(),
                                       rtol=1e-4, atol=1e-4)
