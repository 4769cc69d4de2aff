"""The trainer's fast step (TrainConfig.fast_step): on a CPU it runs FastTrainStep eagerly with
the reference kernels and must train the same weights as the autograd path; config checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from saelens_lite.training import TrainConfig, train
from saelens_lite.training.checkpoint import list_checkpoints
from saelens_lite.training.hook_state import HookState, build_sae

D, F = 16, 64


def synthetic(n: int = 2000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dirs_FD = torch.randn(F, D, generator=g)
    codes_NF = (torch.rand(n, F, generator=g) < 0.06) * torch.rand(n, F, generator=g)
    return codes_NF @ dirs_FD + 3.0


def cfg(out: Path, **kw) -> TrainConfig:
    base = dict(architecture="topk", latents=F, k=4, lr=3e-3, batch_size=128, tokens=128 * 30,
                warmup_steps=5, log_every=5, checkpoint_every=0, init_sample_tokens=1024,
                device="cpu", dtype="float32", out_dir=str(out), progress=False)
    base.update(kw)  # float32: both paths the same math on every CPU (auto picks bf16 on some)
    return TrainConfig.from_dict(base)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
@pytest.mark.parametrize("extra", [
    {},  # schedule (warm-up + linear decay), the default grad clip, free decoder rows from 0.1
    # a tight clip that binds, and a window short enough that latents die: AuxK with a mask
    {"grad_clip": 0.05, "latents": 4 * F, "dead_window_tokens": 128, "sae_options": {"aux_k": 8}},
    # unit decoder rows (parallel gradient removed, rows renormalised: the rule before session 15)
    {"sae_options": {"decoder_norm": "unit"}},
], ids=["schedule", "clip+auxk", "unit-decoder"])
def test_fast_step_on_cpu_trains_the_same_weights_as_autograd(tmp_path, arch, extra):
    x = synthetic()
    # BatchTopK, Matryoshka: the fast step caps a row at its first 2k candidates where the model keeps
    # more; with 2k = F no row can exceed the cap, so the two paths are the same math.
    extra = {**extra, "k": extra.get("latents", F) // 2} if arch != "topk" else extra
    slow = train(cfg(tmp_path / "off", architecture=arch, fast_step="off", **extra), x)
    fast = train(cfg(tmp_path / "on", architecture=arch, fast_step="on", **extra), x)
    for (name, p), q in zip(slow.state_dict().items(), fast.state_dict().values()):
        torch.testing.assert_close(q, p, rtol=2e-4, atol=2e-5, msg=name)
    a, b = metrics(tmp_path / "off"), metrics(tmp_path / "on")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("loss", "mse", "l0", "fvu", "dead_fraction", "lr"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-3, abs=1e-5), key
    if "grad_clip" in extra and arch == "topk":  # the AuxK term ran on both paths
        assert any(r["dead_fraction"] > 0 for r in a)
        assert any(r.get("auxk", 0) > 0 for r in b) and any(r.get("auxk", 0) > 0 for r in a)
    norms = fast.W_dec.norm(dim=1)  # in raw units: the saved SAE has the input scale c folded in
    if extra.get("sae_options", {}).get("decoder_norm") == "unit":  # every row at 1 / c
        torch.testing.assert_close(norms, norms.median().expand_as(norms))
    elif "sae_options" not in extra:  # the default free rows moved off their 0.1 start (not to 1)
        assert (norms - 0.1).abs().max() > 0.05 and (norms - 1).abs().max() > 0.05


def test_fast_step_run_resumed_from_a_checkpoint_ends_with_identical_weights(tmp_path):
    x = synthetic()
    kw = dict(fast_step="on", checkpoint_every=128 * 10, keep_checkpoints=5,
              dead_window_tokens=128 * 3)
    whole = train(cfg(tmp_path / "whole", **kw), x)
    run = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole", run)
    first, *later = list_checkpoints(run)  # steps 10 and 20: resume from step 10
    assert later
    for c in later:
        c.unlink()
    shutil.rmtree(run / "activations")
    again = train(cfg(run, resume=True, **kw), x)
    for (name, p), q in zip(whole.state_dict().items(), again.state_dict().values()):
        assert torch.equal(p, q), name


def test_auto_picks_autograd_on_cpu_and_fast_on_cuda(tmp_path):
    c = cfg(tmp_path / "r")
    assert c.fast_step == "auto" and c.cuda_graphs
    assert not c.use_fast_step("cpu") and c.use_fast_step("cuda")
    st = HookState(build_sae(c, D), c, torch.device("cpu"))
    assert st.fast is None
    on = cfg(tmp_path / "r", fast_step="on")
    assert HookState(build_sae(on, D), on, torch.device("cpu")).fast is not None
    for kw in ({"architecture": "relu"}, {"sae_options": {"multi_topk": True}}):
        assert not cfg(tmp_path / "r", **kw).use_fast_step("cuda")  # auto falls back
    for arch in ("batchtopk", "matryoshka"):  # as TopK: fast on CUDA, autograd on CPU
        m = cfg(tmp_path / "r", architecture=arch)
        assert m.use_fast_step("cuda") and not m.use_fast_step("cpu")
        assert HookState(build_sae(m, D), m, torch.device("cpu")).fast is None
        on = cfg(tmp_path / "r", architecture=arch, fast_step="on")
        assert HookState(build_sae(on, D), on, torch.device("cpu")).fast is not None


@pytest.mark.parametrize("kw, match", [
    ({"fast_step": "yes"}, r"fast_step='yes': choose one of \['auto', 'on', 'off'\]"),
    ({"fast_step": "on", "architecture": "relu"}, r"fast_step='on': needs architecture.*relu"),
    ({"fast_step": "on", "sae_options": {"multi_topk": True}}, r"fast_step='on'.*multi_topk=True"),
    ({"cuda_graphs": "no"}, r"cuda_graphs='no': must be true or false"),
])
def test_bad_fast_step_settings_name_the_field(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        cfg(tmp_path / "r", **kw)


def test_resume_refuses_a_different_fast_step_but_not_cuda_graphs(tmp_path):
    c = cfg(tmp_path / "r", fast_step="on")
    saved = c.to_dict()
    assert cfg(tmp_path / "r", fast_step="off").resume_mismatch(saved) == ["fast_step"]
    assert cfg(tmp_path / "r", fast_step="on", cuda_graphs=False).resume_mismatch(saved) == []
    old = {k: v for k, v in cfg(tmp_path / "r").to_dict().items() if k not in ("fast_step", "cuda_graphs")}
    assert cfg(tmp_path / "r").resume_mismatch(old) == []  # checkpoints from before the field


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("graphs", [False, True])
def test_fast_step_on_cuda_trains_close_to_autograd(tmp_path, graphs):
    x = synthetic()
    kw = dict(device="cuda", dtype="float32", dead_window_tokens=128 * 3)
    slow = train(cfg(tmp_path / "off", fast_step="off", **kw), x)
    fast = train(cfg(tmp_path / "on", fast_step="on", cuda_graphs=graphs, **kw), x)
    for (name, p), q in zip(slow.state_dict().items(), fast.state_dict().values()):
        assert (p - q).norm() <= 1e-2 * p.norm() + 1e-5, name


@pytest.mark.slow  # starts a process
def test_two_rank_fast_step_equals_one_process(tmp_path):
    """Under torchrun the fast step runs eagerly with the gradient all-reduce between the
    closed-form backward and Adam: the weights equal a one-process fast-step run."""
    import numpy as np
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    from test_distributed import torchrun, train_config, weights

    x_ND = synthetic(1000)
    np.save(tmp_path / "x.npy", x_ND.numpy())
    conf = train_config(tmp_path / "ddp", "topk", fast_step="on")
    (tmp_path / "jobs.json").write_text(json.dumps([{"config": conf, "data": str(tmp_path / "x.npy")}]))
    torchrun("_dist_train.py", str(tmp_path / "jobs.json"))
    train(TrainConfig.from_dict(train_config(tmp_path / "single", "topk", fast_step="on")), x_ND)
    ddp, single = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    for name, w in single.items():
        torch.testing.assert_close(ddp[name], w, rtol=1e-4, atol=1e-5, msg=name)
