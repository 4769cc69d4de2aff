"""Training transcoders (``target_hook``): inputs and targets are rows of the same tokens from
every kind of source, the two normalisation scales are folded into the saved coder, the skip
connection learns, AuxK and resume work as for SAEs, and bad pairs fail naming both hooks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import DiesAfter, write_cache

from saelens_lite.saes import REGISTRY, SAE
from saelens_lite.training import ArraySource, TrainConfig, open_source, train

pytestmark = pytest.mark.usefixtures("one_thread")

D, F = 16, 64
TRANSCODERS = sorted(n for n, c in REGISTRY.items() if c.supports_transcoder)


def pair(n: int = 1200, seed: int = 0) -> dict[str, torch.Tensor]:
    """x: sparse codes through random directions; y: the same codes through other directions
    (not a linear function of x: 64 codes in 16 dimensions), plus offsets. A transcoder that
    finds the codes from x maps them to y."""
    g = torch.Generator().manual_seed(seed)
    codes_NF = (torch.rand(n, F, generator=g) < 0.06) * torch.rand(n, F, generator=g)
    x = codes_NF @ torch.randn(F, D, generator=g) + 1.0
    y = codes_NF @ torch.randn(F, D, generator=g) - 0.5
    return {"x": x, "y": y}


def cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(architecture="topk", hooks=["x"], target_hook="y", latents=F, k=4, lr=3e-3,
                batch_size=128, tokens=128 * 40, warmup_steps=5, log_every=5, checkpoint_every=0,
                init_sample_tokens=1024, b_dec_init="mean", out_dir=str(tmp_path / "run"), progress=False)
    base.update(kw)
    return TrainConfig.from_dict(base)


def fvu(pred, y) -> float:
    return float((pred - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("arch", TRANSCODERS)
def test_every_transcoder_architecture_learns_the_target_and_saves_both_hooks(tmp_path, arch):
    data = pair()
    # relu's L1 default (5, for long runs at sqrt(D) scale) keeps 120 steps near zero codes
    l1 = {"sparsity_coeff": 0.5} if arch == "relu" else {}
    sae = train(cfg(tmp_path, architecture=arch, lr=1e-2, tokens=128 * 120, **l1), data)
    with torch.no_grad():
        got = fvu(sae(data["x"]), data["y"])
    assert got < 0.8, got  # the mean predictor has FVU 1, the untrained coder ~1
    saved = json.loads((tmp_path / "run" / "x" / "cfg.json").read_text())
    assert (saved["hook_name"], saved["target_hook"], saved["skip"]) == ("x", "y", False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["sae"]["target_hook"] == "y"
    loaded = SAE.load(tmp_path / "run" / "x")
    with torch.no_grad():
        torch.testing.assert_close(loaded(data["x"]), sae(data["x"]))


def test_inputs_and_targets_have_separate_scales_folded_into_the_saved_coder(tmp_path):
    """Normalisation makes training invariant to the data's scale, per side: trained on
    (a x, b y) the saved transcoder is b/a-equivariant, sae2(a x) = b sae1(x)."""
    data = pair()
    a, b = 7.0, 0.05
    sae1 = train(cfg(tmp_path, skip=True, out_dir=str(tmp_path / "r1")), data)
    sae2 = train(cfg(tmp_path, skip=True, out_dir=str(tmp_path / "r2")), {"x": a * data["x"], "y": b * data["y"]})
    with torch.no_grad():
        torch.testing.assert_close(sae2(a * data["x"]), b * sae1(data["x"]), rtol=2e-3, atol=2e-3 * b)
    assert float(sae1.W_skip.detach().abs().max()) > 0  # the skip connection was trained


def test_the_skip_connection_learns_a_linear_part_a_sparse_code_cannot(tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1500, D, generator=g)
    data = {"x": x, "y": x @ torch.randn(D, D, generator=g)}  # dense and linear
    kw = dict(k=2, lr=1e-2, tokens=128 * 80)
    plain = train(cfg(tmp_path, out_dir=str(tmp_path / "plain"), **kw), data)
    skip = train(cfg(tmp_path, out_dir=str(tmp_path / "skip"), skip=True, **kw), data)
    with torch.no_grad():
        f_plain, f_skip = fvu(plain(x), data["y"]), fvu(skip(x), data["y"])
    assert f_skip < 0.5 * f_plain, (f_skip, f_plain)


def test_auxk_revives_against_the_target_and_dead_latents_are_tracked(tmp_path):
    run = train(cfg(tmp_path, latents=256, dead_window_tokens=256, tokens=128 * 30), pair())
    recs = metrics(tmp_path / "run")
    assert max(r.get("auxk", 0.0) for r in recs) > 0
    assert all("dead_fraction" in r for r in recs) and run.cfg.target_hook == "y"


def test_a_resumed_transcoder_run_equals_an_uninterrupted_one(tmp_path):
    data = pair()
    kw = dict(skip=True, checkpoint_every=128 * 10, dead_window_tokens=128 * 3, tokens=128 * 40)
    full = train(cfg(tmp_path, out_dir=str(tmp_path / "full"), **kw), ArraySource(data))
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path, out_dir=str(tmp_path / "cut"), **kw), DiesAfter(data))
    resumed = train(cfg(tmp_path, out_dir=str(tmp_path / "cut"), resume=True, **kw), ArraySource(data))
    for name, w in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], w, rtol=0, atol=0, msg=name)
    assert metrics(tmp_path / "cut")[-1] == metrics(tmp_path / "full")[-1]


def test_resume_refuses_another_target_or_skip(tmp_path):
    train(cfg(tmp_path, checkpoint_every=128 * 10, tokens=128 * 20), pair())
    (tmp_path / "run" / "x").rename(tmp_path / "moved")
    data = pair() | {"z": pair(seed=3)["y"]}
    with pytest.raises(ValueError, match="target_hook='z' differs"):
        train(cfg(tmp_path, checkpoint_every=128 * 10, tokens=128 * 20, resume=True, target_hook="z"), data)
    with pytest.raises(ValueError, match="skip=True differs"):
        train(cfg(tmp_path, checkpoint_every=128 * 10, tokens=128 * 20, resume=True, skip=True), data)


@pytest.fixture
def pair_cache(tmp_path):
    """A cache whose hook y is an exact function of hook x row by row: y = 2 x + 1."""
    x = pair(n=700)["x"].numpy()
    return write_cache(tmp_path / "cache", {"x": x, "y": 2 * x + 1, "w": x[:, :8]}, meta={"test": 1})


def test_cache_batches_pair_the_same_rows_and_the_coder_learns_their_map(tmp_path, pair_cache):
    src = open_source(pair_cache, cfg(tmp_path))
    assert src.hooks == ["x", "y"]
    for batch in (next(src.batches(300, seed=1, start_batch=k)) for k in (0, 2, 5)):  # crosses passes
        torch.testing.assert_close(batch["y"], 2 * batch["x"] + 1)
    sae = train(cfg(tmp_path, skip=True, lr=1e-2, tokens=128 * 80), str(pair_cache))
    x = torch.from_numpy(np.load(next((pair_cache / "acts" / "x").glob("*.npy"))))
    with torch.no_grad():
        assert fvu(sae(x), 2 * x + 1) < 0.1  # linear: the skip connection alone can hold it


def test_a_cache_without_the_target_or_of_another_width_fails_naming_both_hooks(tmp_path, pair_cache):
    with pytest.raises(ValueError, match=r"transcoder x -> nope: the data lacks \[.nope.\].*--hooks x nope"):
        train(cfg(tmp_path, target_hook="nope"), str(pair_cache))
    with pytest.raises(ValueError, match="transcoder x -> w: widths 16 and 8 differ"):
        train(cfg(tmp_path, target_hook="w"), str(pair_cache))
    assert not (tmp_path / "run").exists()


def test_arrays_with_other_row_counts_fail_naming_both_hooks(tmp_path):
    data = pair()
    with pytest.raises(ValueError, match="1200 rows of x but 1199 of y"):
        train(cfg(tmp_path), {"x": data["x"], "y": data["y"][:-1]})


@pytest.mark.parametrize("kw, match", [
    (dict(skip=True, target_hook=""), "skip=True: a skip connection belongs to a transcoder"),
    (dict(hooks=["x", "z"]), r"exactly one input hook; got hooks=\['x', 'z'\]"),
    (dict(target_hook="x"), "target_hook='x': is the input hook itself"),
    (dict(architecture="dense"), "architecture='dense' cannot be a transcoder; choose one of"),
    (dict(fast_step="on"), "fast_step='on': the fast step does not train transcoders"),
])
def test_bad_transcoder_configs_name_the_field(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        cfg(tmp_path, **kw)


def test_streaming_captures_both_hooks_in_one_forward_and_trains(tmp_path):
    from saelens_lite.lm.load import load_model
    from saelens_lite.training.data import StreamSource

    lm = load_model("tiny-llama")
    hooks = ["blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out"]
    c = cfg(tmp_path, hooks=hooks[:1], target_hook=hooks[1], k=8, latents=128, batch_size=64,
            tokens=64 * 6, init_sample_tokens=128)
    src = StreamSource(lm, hooks, dataset="builtin:pydocs", context_size=32, model_batch_size=4,
                       buffer_contexts=4)
    batch = next(src.batches(50, seed=0))
    with torch.no_grad():
        torch.testing.assert_close(lm.model.model.layers[1].mlp(batch[hooks[0]]), batch[hooks[1]],
                                   rtol=1e-4, atol=1e-5)
    sae = train(c, src)
    assert (sae.cfg.hook_name, sae.cfg.target_hook) == tuple(hooks)


def test_a_decoder_started_from_the_codes_learns_faster_than_a_random_one(tmp_path):
    """decoder_init="auto" (codes, for a transcoder) against the random start at 40 steps: the
    random decoder rows write against most latents' targets at first (docs/transcoders.md)."""
    data = pair()
    got = {}
    for mode in ("random", "auto"):
        sae = train(cfg(tmp_path, out_dir=str(tmp_path / mode), sae_options={"decoder_init": mode}), data)
        with torch.no_grad():
            got[mode] = fvu(sae(data["x"]), data["y"])
    assert got["auto"] < 0.8 * got["random"], got


def test_transcoders_trained_from_a_cache_name_its_model_and_trace_refuses_them_on_another(tmp_path, capsys):
    from saelens_lite.cache.harvest import HarvestConfig, harvest
    from saelens_lite.cli import main

    hooks = [f"blocks.{i}.hook_mlp_{s}" for i in range(4) for s in ("in", "out")]
    harvest(HarvestConfig(model="tiny-llama", hooks=hooks, dataset="builtin:pydocs", context_size=24,
                          tokens=400, batch_size=4, device="cpu"), tmp_path / "cache", progress=False)
    c = cfg(tmp_path, hooks=["blocks.*.hook_mlp_in"], target_hook="blocks.*.hook_mlp_out", latents=32,
            batch_size=64, tokens=64 * 3, init_sample_tokens=128, activations=str(tmp_path / "cache"))
    train(c)
    saved = [json.loads((tmp_path / "run" / f"blocks.{i}.hook_mlp_in" / "cfg.json").read_text()) for i in range(4)]
    assert c.model is None and [s["model_name"] for s in saved] == ["tiny-llama"] * 4  # from the manifest
    args = ["trace", "--transcoders", str(tmp_path / "run"), "--prompt", "abc", "--out", str(tmp_path / "g.json")]
    assert main([*args, "--model", "tiny-llama"]) == 0
    capsys.readouterr()
    assert main([*args, "--model", "tiny-gpt2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "trained on model_name='tiny-llama', not 'tiny-gpt2'" in err and "\n" not in err
