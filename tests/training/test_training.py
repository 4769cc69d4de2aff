"""Tests for saelens_lite.training: tiny shapes (D=16, F=64) on synthetic data, CPU only."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_cache

from saelens_lite.saes import REGISTRY, SAE, SAEConfig
from saelens_lite.training import ArraySource, TrainConfig, open_source, train
from saelens_lite.training.checkpoint import list_checkpoints
from saelens_lite.training.config import (
    LR_TAPER_STEPS,
    SHORT_RUN_LR_FACTOR,
    default_lr,
    width_rule_lr,
)
from saelens_lite.training.trainer import DeadLatentTracker, lr_at, sparsity_scale_at

ARCH = "topk"
REPO = Path(__file__).resolve().parents[2]
D, F = 16, 64


def synthetic(n: int = 2000, seed: int = 0, offset: float = 3.0) -> torch.Tensor:
    """Sparse combinations of 64 random directions plus an offset: an SAE can learn it."""
    g = torch.Generator().manual_seed(seed)
    dirs_FD = torch.randn(F, D, generator=g)
    codes_NF = (torch.rand(n, F, generator=g) < 0.06) * torch.rand(n, F, generator=g)
    return codes_NF @ dirs_FD + offset


def cfg(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(architecture=ARCH, latents=F, k=4, lr=3e-3, batch_size=128, tokens=128 * 60,
                warmup_steps=5, log_every=5, checkpoint_every=0, init_sample_tokens=1024,
                out_dir=str(tmp_path / "run"), progress=False)
    base.update(kw)
    return TrainConfig.from_dict(base)


def fvu(sae, x_ND: torch.Tensor) -> float:
    with torch.no_grad():
        x_hat = sae(x_ND)
    return float((x_hat - x_ND).pow(2).sum() / (x_ND - x_ND.mean(0)).pow(2).sum())


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# --- training -------------------------------------------------------------------------------


def test_training_on_a_tensor_reduces_fvu_and_writes_the_run_folder(tmp_path):
    x = synthetic()
    sae = train(cfg(tmp_path), x)
    recs = metrics(tmp_path / "run")
    assert recs[-1]["fvu"] < 0.5 * recs[0]["fvu"]
    assert fvu(sae, x) < 0.35
    for key in ("hook", "step", "tokens", "loss", "l0", "fvu", "dead_fraction", "lr", "sparsity_scale"):
        assert key in recs[0]
    assert recs[-1]["step"] == 60 and recs[-1]["tokens"] == 60 * 128
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["sae"]["architecture"] == ARCH  # nested (issue 24)
    assert (run / "activations" / "cfg.json").exists() and (run / "activations" / "sae.safetensors").exists()


def test_the_log_says_how_a_default_lr_relates_to_the_long_run_rule(tmp_path, caplog):
    x = synthetic(n=500)
    with caplog.at_level("INFO", logger="saelens_lite.training.trainer"):
        train(cfg(tmp_path / "a", lr=None, tokens=128 * 4), x)
    assert any("default for 4 steps: 4x the long-run rule" in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level("INFO", logger="saelens_lite.training.trainer"):
        train(cfg(tmp_path / "b", tokens=128 * 4), x)
    assert not any("long-run rule" in r.message for r in caplog.records)


@pytest.mark.parametrize("arch", sorted(REGISTRY))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_architecture_trains_saves_and_loads(tmp_path, arch, dtype):
    x = synthetic(n=500)
    sae = train(cfg(tmp_path, architecture=arch, tokens=128 * 4, log_every=2, dtype=dtype), x)
    loaded = SAE.load(tmp_path / "run" / "activations")
    assert type(loaded) is REGISTRY[arch]
    assert torch.allclose(loaded(x[:64]), sae(x[:64]), atol=1e-5)
    assert all(math.isfinite(r["loss"]) for r in metrics(tmp_path / "run"))


def test_saved_sae_reconstructs_raw_activations_with_normalisation_folded_in(tmp_path):
    x = synthetic() * 250.0  # far from E||x|| = sqrt(D): an unfolded scale would show
    train(cfg(tmp_path, tokens=128 * 80), x)
    loaded = SAE.load(tmp_path / "run" / "activations")
    last = metrics(tmp_path / "run")[-1]["fvu"]
    assert fvu(loaded, x) == pytest.approx(last, abs=0.08)


def test_tokens_beyond_the_data_make_fresh_shuffled_passes():
    x = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 2)
    stream = ArraySource({"h": x}).batches(5, seed=0)
    rows = torch.cat([next(stream)["h"][:, 0] for _ in range(6)])  # 3 passes over 10 rows
    passes = rows.view(3, 10)
    for p in passes:
        assert sorted(p.tolist()) == list(range(10))
    assert not torch.equal(passes[0], passes[1])


def test_training_longer_than_the_data_runs_every_step(tmp_path):
    train(cfg(tmp_path, tokens=128 * 30), synthetic(n=500))  # ~7.7 passes
    assert metrics(tmp_path / "run")[-1]["step"] == 30


def test_array_source_skips_exactly_to_a_batch():
    src = ArraySource({"h": synthetic(n=300)})
    full = src.batches(64, seed=5)
    expected = [next(full)["h"] for _ in range(9)]
    skipped = src.batches(64, seed=5, start_batch=6)
    for b in range(6, 9):
        assert torch.equal(next(skipped)["h"], expected[b])


# --- schedules and dead latents -------------------------------------------------------------


@pytest.mark.parametrize("decay", ["linear", "cosine", "none"])
def test_lr_schedule_follows_the_formula(tmp_path, decay):
    c = cfg(tmp_path, tokens=100 * 128, warmup_steps=10, decay=decay, decay_fraction=0.2)
    assert lr_at(0, c, 1.0) == pytest.approx(0.1)
    assert lr_at(4, c, 2.0) == pytest.approx(1.0)
    assert lr_at(50, c, 1.0) == 1.0
    for s in (80, 85, 99):
        p = (s - 80) / 20
        want = {"linear": 1 - p, "cosine": 0.5 * (1 + math.cos(math.pi * p)), "none": 1.0}[decay]
        assert lr_at(s, c, 1.0) == pytest.approx(want)


def test_default_warmup_is_five_percent_of_steps_capped_at_1000(tmp_path):
    short = cfg(tmp_path, tokens=400 * 128, warmup_steps=None)  # 400 steps -> 20 warm-up steps
    assert short.warmup == 20
    assert lr_at(9, short, 1.0) == pytest.approx(0.5) and lr_at(19, short, 1.0) == 1.0
    long = cfg(tmp_path, tokens=100_000 * 128, warmup_steps=None)
    assert long.warmup == 1000
    with pytest.raises(ValueError, match="warmup_steps=-1"):
        cfg(tmp_path, warmup_steps=-1)


def test_sparsity_warmup_is_linear_then_flat(tmp_path):
    c = cfg(tmp_path, sparsity_warmup_steps=20)
    assert [sparsity_scale_at(s, c) for s in (0, 9, 19, 40)] == pytest.approx([0.05, 0.5, 1.0, 1.0])
    assert sparsity_scale_at(0, cfg(tmp_path)) == 1.0


def test_dead_latent_tracker_counts_tokens_since_last_fire():
    t = DeadLatentTracker(4, window=100)
    fired = torch.tensor([True, False, False, False])
    t.update(fired, 60)
    assert not t.dead_mask().any()
    t.update(torch.tensor([False, True, False, False]), 60)  # latents 2, 3: 120 tokens silent
    assert t.dead_mask().tolist() == [False, False, True, True]
    t.update(torch.tensor([False, False, True, False]), 60)
    assert t.dead_mask().tolist() == [True, False, False, True]


def test_logged_dead_fraction_uses_half_the_tokens_seen_before_the_window_passes():
    t = DeadLatentTracker(4, window=1000)
    t.update(torch.tensor([True, True, True, True]), 100)
    t.update(torch.tensor([True, True, False, False]), 100)  # 2, 3 silent for 100 of 200 tokens
    assert t.report_window() == 100 and t.dead_fraction() == 0.0
    t.update(torch.tensor([True, False, False, True]), 100)  # 2: 200 > 150; 1: 100
    assert t.report_window() == 150 and t.dead_fraction() == 0.25
    assert not t.dead_mask().any()  # AuxK's mask keeps the full window
    for _ in range(30):
        t.update(torch.tensor([True, False, False, False]), 100)
    assert t.report_window() == 1000 and t.dead_fraction() == 0.75 and t.dead_mask().sum() == 3


def test_latents_that_never_fire_are_reported_dead(tmp_path):
    # Nearly constant inputs make TopK pick the same few latents on every token.
    x = 3.0 + 1e-3 * torch.randn(2000, D, generator=torch.Generator().manual_seed(0))
    train(cfg(tmp_path, lr=1e-6, b_dec_init="zeros", dead_window_tokens=128 * 5, tokens=128 * 20), x)
    assert metrics(tmp_path / "run")[-1]["dead_fraction"] > 0.5


def test_a_run_shorter_than_the_dead_window_still_logs_its_dead_latents(tmp_path):
    # the default 10M-token window never passes here; the logged fraction uses half the run
    x = 3.0 + 1e-3 * torch.randn(2000, D, generator=torch.Generator().manual_seed(0))
    train(cfg(tmp_path, lr=1e-6, b_dec_init="zeros", tokens=128 * 20), x)
    assert metrics(tmp_path / "run")[-1]["dead_fraction"] > 0.5


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("k", 100), ("sparsity_coeff", -1.0), ("architecture", "nope"), ("decay", "step"),
    ("lr", -1e-3), ("batch_size", 0), ("b_dec_init", "median"), ("decay_fraction", 1.5),
])
def test_bad_config_values_name_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        cfg(tmp_path, **{field: value})


def test_k_larger_than_the_expanded_width_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"k=200"):
        train(cfg(tmp_path, latents=None, expansion=2, k=200), synthetic(n=200))
    assert not (tmp_path / "run").exists()


def test_a_hook_missing_from_the_data_fails_naming_it(tmp_path):
    with pytest.raises(ValueError, match="blocks.9.hook_resid_post"):
        train(cfg(tmp_path, hooks=["blocks.9.hook_resid_post"]), {"blocks.0.hook_resid_post": synthetic(200)})
    assert not (tmp_path / "run").exists()


def test_resume_refuses_a_config_that_changes_the_weights(tmp_path):
    x = synthetic(n=500)
    train(cfg(tmp_path, tokens=128 * 20, checkpoint_every=128 * 5), x)
    with pytest.raises(ValueError, match="lr"):
        train(cfg(tmp_path, tokens=128 * 20, checkpoint_every=128 * 5, lr=1e-3, resume=True), x)
    with pytest.raises(ValueError, match=r"width 8"):
        train(cfg(tmp_path, tokens=128 * 20, checkpoint_every=128 * 5, resume=True), x[:, :8])
    with pytest.raises(ValueError, match="resume=True"):
        train(cfg(tmp_path, tokens=128 * 20, checkpoint_every=128 * 5), x)


def test_default_lr_is_the_width_rule_times_a_short_run_factor_tapering_to_one():
    rule = 2e-4 / math.sqrt(4608 / 2**14)  # Gao et al. 2024: 3.77e-4 at F = 4608
    lo, hi = LR_TAPER_STEPS
    assert default_lr(4608, 244) == pytest.approx(SHORT_RUN_LR_FACTOR * rule)
    assert default_lr(4608, lo) == pytest.approx(SHORT_RUN_LR_FACTOR * rule)
    assert default_lr(4608, hi) == pytest.approx(rule)
    assert default_lr(4608, 10**7) == pytest.approx(rule)
    mid = round(math.sqrt(lo * hi))  # log-linear: half the factor's log at the steps' log-midpoint
    assert default_lr(4608, mid) == pytest.approx(math.sqrt(SHORT_RUN_LR_FACTOR) * rule, rel=1e-4)
    lrs = [default_lr(4608, s) for s in range(lo - 100, hi + 100, 97)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # never rises with the budget
    short = dict(tokens=4096 * 244, batch_size=4096)
    assert TrainConfig(lr=None, **short).lr_for(4608) == default_lr(4608, 244)
    assert TrainConfig(lr=1e-3).lr_for(4608) == 1e-3
    for arch in ("batchtopk", "jumprelu", "matryoshka"):
        sae = SAEConfig.build(architecture=arch, d_sae=4608)
        assert TrainConfig(sae=sae, **short).lr_for(4608) == default_lr(4608, 244)
    for arch in ("relu", "dense", "vae"):  # an L1 penalty, and the unmeasured baselines
        sae = SAEConfig.build(architecture=arch, d_sae=4608)
        assert TrainConfig(sae=sae, **short).lr_for(4608) == pytest.approx(rule)


@pytest.mark.parametrize("stored", [True, False], ids=["stored-lr", "checkpoint-without-lr"])
def test_a_default_lr_run_resumes_at_the_lr_it_started_with(tmp_path, stored):
    # A run started under another version's default (here the 1x long-run rule, which
    # checkpoints written before the short-run factor store no value of) finishes at that lr,
    # not at this version's default for its steps (3x), and so ends as it would have.
    x = synthetic(n=500)
    kw = dict(tokens=128 * 20, checkpoint_every=128 * 10, keep_checkpoints=5)
    old = width_rule_lr(F)
    assert cfg(tmp_path, lr=None, **kw).lr_for(F) != pytest.approx(old)
    ref = train(cfg(tmp_path / "ref", lr=old, **kw), x)
    run = tmp_path / "resumed" / "run"
    (run / "checkpoints").mkdir(parents=True)
    ck = torch.load(tmp_path / "ref" / "run" / "checkpoints" / "step_000000010.pt", weights_only=False)
    ck["config"]["lr"] = None  # as the config of a run on the default lr
    for st in ck["hooks"].values():
        if stored:
            assert st["base_lr"] == old
        else:
            del st["base_lr"]
    torch.save(ck, run / "checkpoints" / "step_000000010.pt")
    resumed = train(cfg(tmp_path / "resumed", lr=None, resume=True, **kw), x)
    for (name, p), q in zip(ref.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(q, p, rtol=0, atol=0, msg=name)


def test_a_checkpoint_with_the_flat_config_of_before_the_nesting_resumes_identically(tmp_path):
    x = synthetic(n=500)
    kw = dict(tokens=128 * 20, checkpoint_every=128 * 10, keep_checkpoints=5)
    ref = train(cfg(tmp_path / "ref", **kw), x)
    run = tmp_path / "resumed" / "run"
    (run / "checkpoints").mkdir(parents=True)
    ck = torch.load(tmp_path / "ref" / "run" / "checkpoints" / "step_000000010.pt", weights_only=False)
    nested = ck["config"].pop("sae")
    assert nested["architecture"] == ARCH and nested["d_sae"] == F
    ck["config"] |= {"architecture": ARCH, "latents": F, "k": 4, "sparsity_coeff": None,
                     "sae_options": {}, "target_hook": "", "skip": False,
                     "b_dec_init": "geometric_median"}  # the keys TrainConfig had before issue 24
    torch.save(ck, run / "checkpoints" / "step_000000010.pt")
    resumed = train(cfg(tmp_path / "resumed", resume=True, **kw), x)
    for (name, p), q in zip(ref.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(q, p, rtol=0, atol=0, msg=name)


def test_checkpoints_keep_only_the_newest_two(tmp_path):
    train(cfg(tmp_path, tokens=128 * 30, checkpoint_every=128 * 5), synthetic(n=500))
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_000000020.pt", "step_000000025.pt"]


# --- kill -9 and resume ---------------------------------------------------------------------


def _worker(out: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(Path(__file__).with_name("_train_crash_worker.py")),
                             str(out), mode], env=env, stderr=subprocess.PIPE)


@pytest.mark.slow  # starts a process
def test_a_run_killed_by_sigkill_and_resumed_ends_with_identical_weights(tmp_path):
    full = _worker(tmp_path / "full", "full")
    crash = _worker(tmp_path / "crashed", "crash")
    deadline = time.time() + 60
    while not list_checkpoints(tmp_path / "crashed"):
        assert crash.poll() is None, crash.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    crash.send_signal(signal.SIGKILL)
    crash.wait()
    assert crash.returncode == -signal.SIGKILL
    assert not (tmp_path / "crashed" / "x" / "sae.safetensors").exists(), "killed too late"
    resumed = _worker(tmp_path / "crashed", "resume")
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read().decode()
    assert full.wait(timeout=120) == 0, full.stderr.read().decode()
    a = (tmp_path / "full" / "x" / "sae.safetensors").read_bytes()
    b = (tmp_path / "crashed" / "x" / "sae.safetensors").read_bytes()
    assert a == b
    steps = [r["step"] for r in metrics(tmp_path / "crashed")]
    assert steps == sorted(set(steps)) == [r["step"] for r in metrics(tmp_path / "full")]


# --- data sources ---------------------------------------------------------------------------


def test_npy_file_source_is_memory_mapped_and_trains(tmp_path):
    x = synthetic(n=600).numpy()
    np.save(tmp_path / "acts.npy", x)
    src = open_source(str(tmp_path / "acts.npy"), cfg(tmp_path))
    assert isinstance(src.arrays["activations"], np.memmap)
    sae = train(cfg(tmp_path, activations=str(tmp_path / "acts.npy"), tokens=128 * 10), None)
    assert sae.W_dec.shape == (F, D)


def test_safetensors_file_source_trains_under_the_hook_name(tmp_path):
    from safetensors.numpy import save_file

    x = synthetic(n=600).numpy()
    save_file({"blocks.1.hook_resid_post": x}, tmp_path / "acts.safetensors")
    src = open_source(tmp_path / "acts.safetensors", cfg(tmp_path))
    assert src.hooks == ["blocks.1.hook_resid_post"]
    assert np.array_equal(src.arrays["blocks.1.hook_resid_post"], x)
    train(cfg(tmp_path, tokens=128 * 10), tmp_path / "acts.safetensors")
    assert (tmp_path / "run" / "blocks.1.hook_resid_post" / "sae.safetensors").exists()


@pytest.fixture
def small_cache(tmp_path):
    x, y = synthetic(n=700, seed=1).numpy(), synthetic(n=700, seed=2).numpy()[:, :8]
    return write_cache(tmp_path / "cache", {"a": x, "b": y}, meta={"test": 1})


def test_cache_source_trains_one_sae_per_hook(tmp_path, small_cache):
    out = train(cfg(tmp_path, tokens=128 * 10, k=4), str(small_cache))
    assert set(out) == {"a", "b"}
    assert out["b"].W_dec.shape == (F, 8)
    src = open_source(small_cache, cfg(tmp_path, hooks=["a"]))
    full = src.batches(100, seed=1)
    expected = [next(full)["a"] for _ in range(9)]  # crosses an epoch boundary
    assert torch.equal(next(src.batches(100, seed=1, start_batch=8))["a"], expected[8])


def test_a_hook_missing_from_the_cache_fails_before_training(tmp_path, small_cache):
    with pytest.raises(ValueError, match="'c'"):
        train(cfg(tmp_path, hooks=["a", "c"]), str(small_cache))
    assert not (tmp_path / "run").exists()


def test_streaming_from_a_tiny_model_trains_each_hook_and_skips_exactly(tmp_path):
    from saelens_lite.lm.load import load_model
    from saelens_lite.training.data import StreamSource

    lm = load_model("tiny-llama")
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    src = StreamSource(lm, hooks, dataset="builtin:pydocs", context_size=32, model_batch_size=4,
                       buffer_contexts=4)
    full = src.batches(50, seed=0)
    expected = [next(full) for _ in range(6)]
    resumed = next(src.batches(50, seed=0, start_batch=5))
    for h in hooks:
        assert torch.equal(resumed[h], expected[5][h])
    assert src.state()["contexts_consumed"] > 0
    out = train(cfg(tmp_path, hooks=hooks, k=8, latents=128, tokens=64 * 6, batch_size=64,
                    init_sample_tokens=128), src)
    assert set(out) == set(hooks) and out[hooks[1]].W_dec.shape == (128, lm.model.config.hidden_size)


# --- W&B ------------------------------------------------------------------------------------


@pytest.mark.slow  # wandb starts its wandb-core service process
def test_wandb_offline_run_is_written_without_prompting(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    (tmp_path / "wb").mkdir()
    t0 = time.time()
    train(cfg(tmp_path, tokens=128 * 10, wandb=True), synthetic(n=300))
    assert time.time() - t0 < 15
    assert list((tmp_path / "wb").rglob("*.wandb"))


@pytest.mark.parametrize("kind", ["tensor-f32", "tensor-bf16", "numpy-f16", "numpy-f64", "memmap-f32"])
def test_array_source_batches_follow_the_seeded_passes_in_a_kept_dtype(tmp_path, kind):
    """Batch b is rows perm(seed, e)[...] of the concatenated passes; 16-bit data stays 16-bit
    (the trainer upcasts on its device), other dtypes arrive as float32; cycled output
    buffers (reuse) hold the same values."""
    base = synthetic(n=50).double()
    a = {"tensor-f32": base.float(), "tensor-bf16": base.bfloat16(), "numpy-f16": base.half().numpy(),
         "numpy-f64": base.numpy()}.get(kind)
    if kind == "memmap-f32":
        np.save(tmp_path / "x.npy", base.float().numpy())
        a = np.load(tmp_path / "x.npy", mmap_mode="r")
    want_dt = {"tensor-bf16": torch.bfloat16, "numpy-f16": torch.float16}.get(kind, torch.float32)
    ref = torch.as_tensor(np.array(a.float() if kind == "tensor-bf16" else a)).double()
    stream = np.concatenate([np.random.default_rng([3, e]).permutation(50) for e in range(3)])
    src = ArraySource({"h": a})
    for reuse in (0, 2):
        it = src.batches(16, seed=3, start_batch=1, reuse=reuse)
        for b in range(1, 9):  # across pass boundaries (passes of 50 rows)
            x = next(it)["h"]
            assert x.dtype == want_dt and x.shape == (16, ref.shape[1])
            assert torch.equal(x.double(), ref[stream[16 * b:16 * (b + 1)]])
    assert src.sample(20, seed=0)["h"].dtype == torch.float32
