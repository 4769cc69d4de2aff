"""Tests for the on-disk activation cache: round trips, gathers, batching, crash safety."""
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

from saelens_lite.cache import (
    FORMAT_VERSION,
    ActivationCache,
    CacheCorruptError,
    CacheWriter,
    HookNotCachedError,
)

REPO = Path(__file__).resolve().parents[2]
HOOKS = {"blocks.0.hook_resid_post": 5, "blocks.1.hook_mlp_out": 3}
META = {"model": "tiny", "context_size": 16}

# Rows are a deterministic function of their index, so any write order can be checked (the
# kill -9 child process runs this same source).
ROWS_SRC = '''
import numpy as np
def rows(start, stop, hooks, S=16):
    i = np.arange(start, stop)
    acts = {h: (i[:, None] * 1000 + np.arange(w)[None] + k * 0.5).astype(np.float32)
            for k, (h, w) in enumerate(sorted(hooks.items()))}
    return acts, i * 7 % 50, i // S, i % S
'''
_ns: dict = {}
exec(ROWS_SRC, _ns)
rows = _ns["rows"]


def write_cache(path, n, *, dtype="float32", shard_tokens=10, chunk=7, hooks=HOOKS):
    with CacheWriter.open(path, meta=META, hooks=hooks, dtype=dtype, shard_tokens=shard_tokens) as w:
        for s in range(0, n, chunk):
            acts, ids, ctx, pos = rows(s, min(s + chunk, n), hooks)
            w.append({h: torch.from_numpy(a) for h, a in acts.items()}, ids, ctx, pos)
    return ActivationCache(path)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_in_order_across_shards(tmp_path, dtype):
    cache = write_cache(tmp_path / "c", 47, dtype=dtype)
    acts, ids, ctx, pos = rows(0, 47, HOOKS)
    assert cache.n_tokens == 47 and cache.complete and cache.hook_names == sorted(HOOKS)
    assert [s["n_tokens"] for s in cache.manifest["shards"]] == [10, 10, 10, 10, 7]
    tdtype = getattr(torch, dtype)
    for h, a in acts.items():
        expected = torch.from_numpy(a).to(tdtype)
        arr = cache.activations(h)
        assert arr.shape == (47, HOOKS[h]) and len(arr) == 47 and cache.d(h) == HOOKS[h]
        assert torch.equal(arr.torch(), expected)
        assert arr.torch().dtype == tdtype
        np.testing.assert_array_equal(arr[:], expected.float().numpy())
        np.testing.assert_array_equal(arr[8:23], expected[8:23].float().numpy())  # spans shards
        np.testing.assert_array_equal(arr[-1], expected[-1].float().numpy())
    np.testing.assert_array_equal(cache.token_ids, ids)
    np.testing.assert_array_equal(cache.context_ids, ctx)
    np.testing.assert_array_equal(cache.positions, pos)
    assert "47" in cache.summary() and dtype in cache.summary()


def test_gather_random_indices_equals_concatenation(tmp_path):
    cache = write_cache(tmp_path / "c", 53)
    h = "blocks.0.hook_resid_post"
    arr = cache.activations(h)
    full = np.concatenate([np.load(tmp_path / "c" / f"acts/{h}/shard_{i:05d}.npy") for i in range(6)])
    rng = np.random.default_rng(0)
    for size in (0, 1, 17, 200):
        idx = rng.integers(-53, 53, size=size)
        np.testing.assert_array_equal(arr[idx], full[idx])
    np.testing.assert_array_equal(arr[::3], full[::3])
    np.testing.assert_array_equal(arr[idx.reshape(10, 20)], full[idx.reshape(10, 20)])
    np.testing.assert_array_equal(arr[idx, 2:4], full[idx, 2:4])
    assert torch.equal(arr.torch(idx), torch.from_numpy(full[idx]))
    with pytest.raises(IndexError):
        arr[np.array([53])]


def row_ids(batch):
    """Activations encode the row id as value // 1000 of column 0."""
    return (batch[:, 0] // 1000).long().tolist()


def test_iter_batches_shuffle_covers_each_row_once_and_is_deterministic(tmp_path):
    cache = write_cache(tmp_path / "c", 95)  # 10 shards, the last one short
    h = "blocks.0.hook_resid_post"
    kw = dict(buffer_shards=3, drop_last=False)
    seen = [r for b in cache.iter_batches(h, 8, seed=1, **kw) for r in row_ids(b)]
    assert sorted(seen) == list(range(95))
    assert seen != list(range(95))
    assert seen == [r for b in cache.iter_batches(h, 8, seed=1, **kw) for r in row_ids(b)]
    assert seen != [r for b in cache.iter_batches(h, 8, seed=2, **kw) for r in row_ids(b)]
    in_order = [r for b in cache.iter_batches(h, 8, shuffle=False, **kw) for r in row_ids(b)]
    assert in_order == list(range(95))
    two = [r for b in cache.iter_batches(h, 5, seed=1, epochs=2, **kw) for r in row_ids(b)]
    assert sorted(two[:95]) == sorted(two[95:]) == list(range(95)) and two[:95] != two[95:]
    assert len(list(cache.iter_batches(h, 8))) == cache.num_batches(8) == 11
    batch = next(cache.iter_batches(h, 8))
    assert batch.shape == (8, 5) and batch.dtype == torch.float32


@pytest.mark.parametrize("shuffle", [True, False])
def test_start_batch_resumes_the_exact_stream(tmp_path, shuffle):
    cache = write_cache(tmp_path / "c", 95)
    h = "blocks.0.hook_resid_post"
    kw = dict(shuffle=shuffle, seed=3, epochs=3, buffer_shards=2)
    full = list(cache.iter_batches(h, 7, **kw))
    assert len(full) == 3 * 95 // 7
    for k in (0, 1, 6, 13, 14, 27, 30, len(full) - 1, len(full)):  # 13-14 and 27 cross epochs
        resumed = list(cache.iter_batches(h, 7, start_batch=k, **kw))
        assert len(resumed) == len(full) - k
        assert all(torch.equal(a, b) for a, b in zip(resumed, full[k:]))
    infinite = cache.iter_batches(h, 7, start_batch=40, epochs=None, **{k: v for k, v in kw.items() if k != "epochs"})
    assert next(infinite).shape == (7, 5)


def test_several_hooks_stay_row_aligned(tmp_path):
    cache = write_cache(tmp_path / "c", 64)
    names = sorted(HOOKS)
    seen = []
    for batch in cache.iter_batches(names, 16, seed=0, buffer_shards=2, dtype=torch.float64):
        assert set(batch) == set(names)
        assert row_ids(batch[names[0]]) == row_ids(batch[names[1]])
        assert torch.equal(batch[names[1]][:, 0] % 1, torch.full((16,), 0.5, dtype=torch.float64))
        seen += row_ids(batch[names[0]])
    assert sorted(seen) == list(range(64)) and seen != list(range(64))
    as_np = next(cache.iter_batches(names, 8, as_torch=False, shuffle=False))
    assert as_np[names[0]].dtype == np.float32 and row_ids(torch.from_numpy(as_np[names[1]])) == list(range(8))


def _stream_reference(cache, h, batch, *, seed, epochs, buffer_shards, shuffle):
    """The documented stream, written out plainly: epoch e visits the shards in the order
    rng(seed, e) permutes them, in windows of buffer_shards shards whose rows rng(seed, e, w)
    permutes; batch k is stream rows [k B, (k + 1) B), the last partial batch dropped."""
    counts = [sh["n_tokens"] for sh in cache.manifest["shards"]]
    starts = np.concatenate([[0], np.cumsum(counts)])
    allrows = cache.activations(h)[:]
    stream = []
    for e in range(epochs):
        order = np.random.default_rng([seed, e]).permutation(len(counts)) if shuffle \
            else np.arange(len(counts))
        for w in range(0, len(order), buffer_shards):
            ids = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in order[w:w + buffer_shards]])
            if shuffle:
                ids = ids[np.random.default_rng([seed, e, w]).permutation(len(ids))]
            stream.extend(ids.tolist())
    return [allrows[stream[i:i + batch]] for i in range(0, len(stream) - batch + 1, batch)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shuffle", [True, False])
def test_iter_batches_equals_the_documented_stream(tmp_path, dtype, shuffle):
    cache = write_cache(tmp_path / "c", 95, dtype=dtype)  # 10 shards, the last one short
    h = "blocks.0.hook_resid_post"
    for batch, buffer_shards, start in ((7, 3, 0), (16, 2, 5), (40, 4, 1), (95, 10, 0)):
        ref = _stream_reference(cache, h, batch, seed=4, epochs=2, buffer_shards=buffer_shards,
                                shuffle=shuffle)
        got = list(cache.iter_batches(h, batch, seed=4, epochs=2, buffer_shards=buffer_shards,
                                      shuffle=shuffle, start_batch=start))
        ringed = [b.clone() for b in cache.iter_batches(  # spanning batches with a ring too
            h, batch, seed=4, epochs=2, buffer_shards=buffer_shards, shuffle=shuffle,
            start_batch=start, reuse=2)]
        assert len(got) == len(ringed) == len(ref) - start
        for g, r, q in zip(got, ref[start:], ringed):
            assert g.dtype == torch.float32 and np.array_equal(g.numpy(), r)
            assert torch.equal(q, g)


def test_reused_output_buffers_cycle_and_hold_the_same_batches(tmp_path):
    cache = write_cache(tmp_path / "c", 100, dtype="bfloat16")
    names = sorted(HOOKS)
    kw = dict(seed=2, epochs=3, buffer_shards=2)  # windows of 20 rows: no batch spans two
    fresh = list(cache.iter_batches(names, 10, **kw))
    ring, ptrs = [], []
    for b in cache.iter_batches(names, 10, reuse=3, dtype=None, **kw):
        assert b[names[0]].dtype == torch.bfloat16  # dtype=None: the stored dtype
        ring.append({h: t.float() for h, t in b.items()})  # copied before it is overwritten
        ptrs.append(b[names[0]].data_ptr())
    assert len(ring) == len(fresh)
    assert all(torch.equal(a[h], b[h]) for a, b in zip(ring, fresh) for h in names)
    assert len(set(ptrs)) == 3 and all(p == ptrs[i % 3] for i, p in enumerate(ptrs))
    with pytest.raises(ValueError, match="reuse=-1"):
        cache.iter_batches(names, 8, reuse=-1)


def test_append_validates_shapes_and_hooks(tmp_path):
    w = CacheWriter.open(tmp_path / "c", meta=META, hooks=HOOKS, dtype="float32", shard_tokens=4)
    acts, ids, ctx, pos = rows(0, 3, HOOKS)
    bad = dict(acts, **{"blocks.1.hook_mlp_out": np.zeros((3, 4), np.float32)})
    with pytest.raises(ValueError, match=r"blocks\.1\.hook_mlp_out.*4.*3"):
        w.append(bad, ids, ctx, pos)
    with pytest.raises(ValueError, match="unknown hooks.*nope"):
        w.append(dict(acts, nope=acts["blocks.1.hook_mlp_out"]), ids, ctx, pos)
    with pytest.raises(ValueError, match="position"):
        w.append(acts, ids, ctx, pos[:2])


def test_crash_leftovers_are_swept_and_writer_resumes(tmp_path):
    path = tmp_path / "c"
    w = CacheWriter.open(path, meta=META, hooks=HOOKS, dtype="float32", shard_tokens=10)
    w.append(*rows(0, 14, HOOKS))  # one committed shard, 4 rows lost with the "crash"
    del w
    stray = [path / "tokens/shard_00001.npy", path / "acts/blocks.0.hook_resid_post/shard_00001.npy",
             path / "acts/blocks.1.hook_mlp_out/shard_00001.npy.tmp", path / "manifest.json.tmp"]
    for p in stray:
        p.write_bytes(b"junk")
    w = CacheWriter.open(path, meta=META, hooks=HOOKS, dtype="float32", shard_tokens=10)
    assert w.tokens_committed == 10 and w.last_committed == (0, 9) and not w.complete
    assert not any(p.exists() for p in stray)
    w.append(*rows(10, 30, HOOKS))
    w.finalize()
    again = CacheWriter.open(path, meta=META, hooks=HOOKS, dtype="float32", shard_tokens=10)
    assert again.complete and again.tokens_committed == 30
    np.testing.assert_array_equal(ActivationCache(path).token_ids, rows(0, 30, HOOKS)[1])


CHILD = ROWS_SRC + '''
import sys, time
from saelens_lite.cache import CacheWriter
path, hooks = sys.argv[1], {"blocks.0.hook_resid_post": 5, "blocks.1.hook_mlp_out": 3}
w = CacheWriter.open(path, meta={"model": "tiny", "context_size": 16}, hooks=hooks, dtype="float32",
                     shard_tokens=32)
print("ready", flush=True)
for s in range(w.tokens_committed, 10**9, 13):
    w.append(*rows(s, s + 13, hooks))
    time.sleep(0.0005)
'''


@pytest.mark.slow  # starts a process
def test_kill_9_mid_write_then_resume_equals_uninterrupted(tmp_path):
    total = 32 * 40 + 5
    path = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], env=env, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        deadline = time.time() + 20
        while time.time() < deadline:
            m = json.loads((path / "manifest.json").read_text())
            if m["n_tokens"] >= 5 * 32:
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    w = CacheWriter.open(path, meta=META, hooks=HOOKS, dtype="float32", shard_tokens=32)
    done = w.tokens_committed
    assert 5 * 32 <= done < total and not w.complete
    assert w.last_committed == (int((done - 1) // 16), int((done - 1) % 16))
    for s in range(done, total, 50):
        w.append(*rows(s, min(s + 50, total), HOOKS))
    w.finalize()
    ref = write_cache(tmp_path / "ref", total, dtype="float32", shard_tokens=32, chunk=29)
    got = ActivationCache(path, verify="full")
    assert got.manifest["shards"] == ref.manifest["shards"]  # identical bytes and checksums
    for h in HOOKS:
        assert torch.equal(got.activations(h).torch(), ref.activations(h).torch())
    np.testing.assert_array_equal(got.positions, ref.positions)


def test_truncated_and_corrupted_files_are_named(tmp_path):
    write_cache(tmp_path / "c", 30)
    target = tmp_path / "c/acts/blocks.1.hook_mlp_out/shard_00001.npy"
    data = target.read_bytes()
    target.write_bytes(data[:-1])
    with pytest.raises(CacheCorruptError, match="shard_00001"):
        ActivationCache(tmp_path / "c")
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF
    target.write_bytes(bytes(flipped))
    cache = ActivationCache(tmp_path / "c")  # size check passes
    with pytest.raises(CacheCorruptError, match=str(target)):
        cache.verify()
    with pytest.raises(CacheCorruptError, match="hook_mlp_out/shard_00001"):
        ActivationCache(tmp_path / "c", verify="full")


def test_missing_manifest_and_newer_format_version(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        ActivationCache(tmp_path)
    write_cache(tmp_path / "c", 5)
    mpath = tmp_path / "c/manifest.json"
    m = json.loads(mpath.read_text())
    m["format_version"] = FORMAT_VERSION + 1
    mpath.write_text(json.dumps(m))
    with pytest.raises(ValueError, match=f"format_version {FORMAT_VERSION + 1}.*upgrade saelens_lite"):
        ActivationCache(tmp_path / "c")


def test_unknown_hook_lists_available(tmp_path):
    cache = write_cache(tmp_path / "c", 5)
    with pytest.raises(HookNotCachedError, match="blocks.9.x.*blocks.0.hook_resid_post, blocks.1.hook_mlp_out"):
        cache.activations("blocks.9.x")
    with pytest.raises(KeyError):
        cache.iter_batches(["blocks.0.hook_resid_post", "nope"], 2)


def test_reopen_with_other_settings_names_the_key(tmp_path):
    path = tmp_path / "c"
    CacheWriter.open(path, meta=META, hooks=HOOKS, dtype="float32", shard_tokens=10).append(*rows(0, 12, HOOKS))
    cases = [(dict(meta=dict(META, context_size=32)), "meta.context_size"), (dict(dtype="float16"), "dtype"),
             (dict(shard_tokens=8), "shard_tokens"), (dict(hooks={"a": 2}), "hooks")]
    for change, key in cases:
        kw = dict(dict(meta=META, hooks=HOOKS, dtype="float32", shard_tokens=10), **change)
        with pytest.raises(ValueError, match=key):
            CacheWriter.open(path, **kw)
    w = CacheWriter.open(path, meta=META, hooks=HOOKS, dtype="float16", shard_tokens=10, overwrite=True)
    assert w.tokens_committed == 0 and not (path / "tokens/shard_00000.npy").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other/notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an activation cache"):
        CacheWriter.open(tmp_path / "other", meta=META, hooks=HOOKS, dtype="float32", shard_tokens=10)


def test_incomplete_cache_opens_read_only_with_warning(tmp_path, caplog):
    w = CacheWriter.open(tmp_path / "c", meta=META, hooks=HOOKS, dtype="float32", shard_tokens=10)
    w.append(*rows(0, 25, HOOKS))
    with caplog.at_level("WARNING"):
        cache = ActivationCache(tmp_path / "c")
    assert "incomplete" in caplog.text and cache.n_tokens == 20 and not cache.complete


def test_threaded_gather_gives_the_same_batches(tmp_path, monkeypatch):
    import saelens_lite.cache.reader as cache_mod

    cache = write_cache(tmp_path / "c", 95, dtype="bfloat16")
    h = "blocks.0.hook_resid_post"
    one = list(cache.iter_batches(h, 16, seed=5, epochs=2))
    monkeypatch.setattr(cache_mod, "PAR_MIN", 1)  # every gather split over the threads
    monkeypatch.setattr(cache_mod.os, "cpu_count", lambda: 4)
    split = list(cache.iter_batches(h, 16, seed=5, epochs=2))
    assert len(one) == len(split) and all(torch.equal(a, b) for a, b in zip(one, split))
