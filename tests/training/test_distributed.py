"""Data-parallel training, distributed-hooks training and sharded harvesting on
torch.distributed (gloo, 2 CPU processes started by ``torchrun``): results equal a single
process on the same global batches / tokens, resume works per rank under the same world size
and refuses another (or a switch between data parallel and distributed hooks)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from saelens_lite.cache import ActivationCache
from saelens_lite.cache.harvest import HarvestConfig, harvest
from saelens_lite.saes import REGISTRY, SAE, TrainOutput
from saelens_lite.training import TrainConfig, resume, train
from saelens_lite.training.data import open_source
from saelens_lite.util import distributed

pytestmark = pytest.mark.skipif(
    not dist.is_available(), reason="torch.distributed is not available"
)

HERE = Path(__file__).parent
torchrun_slow = pytest.mark.slow  # the test or its fixture starts torchrun
D, F = 16, 64
WORLD = 2  # torchrun --nproc_per_node
# Data parallel equals one process on the same global batches for these ...
ARCHS = ("topk", "relu", "jumprelu")
# ... but not for BatchTopK: as the README says, its batch-wide top-k (and the threshold it
# tracks) and the AuxK normaliser read each rank's own slice, so its oracle is one process that
# runs the forward on each rank's slice (`per_rank_slices`). 4x the latents and a 2-step dead
# window leave latents dead, so the AuxK term (and its per-rank normaliser) is in the loss.
PER_RANK_ARCHS = {"batchtopk": dict(latents=4 * F, dead_window_tokens=128)}
TEXT = (
    "The quick brown fox jumps over the lazy dog. Sparse autoencoders find features in activations.\n\n"
    "A second paragraph talks about tokens, contexts and caches written to disk atomically.\n\n"
) * 40


def torchrun(script: str, *args: str, timeout: int = 240) -> None:
    """``python -m torch.distributed.run --standalone --nproc_per_node 2 script args``."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(
        OMP_NUM_THREADS="1",
        # tests/ (helpers) and the checkout under test: a shared venv's editable install may
        # point at another checkout (a git worktree)
        PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE.parents[1])]),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        # a rank that aborts (SIGABRT, SIGSEGV) prints every thread's Python stack
        PYTHONFAULTHANDLER="1",
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(WORLD),
            str(HERE / script),
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, f"torchrun {script} failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"


def train_config(out: Path, arch: str, **kw) -> dict:
    # Every architecture with its default settings. JumpReLU's target-L0 penalty is non-linear
    # in the batch mean L0: the ranks differentiate it at the all-reduced L0 (SAE.batch_mean),
    # which the comparison with one process checks. dead_window_tokens=256 (4 steps) also
    # turns its pre-activation loss on for the latents that stop firing. ``kw`` overrides.
    defaults = dict(
        architecture=arch,
        latents=F,
        k=4,
        lr=3e-3,
        batch_size=64,
        tokens=64 * 30,
        warmup_steps=5,
        log_every=5,
        checkpoint_every=64 * 10,
        init_sample_tokens=512,
        dead_window_tokens=256,
        device="cpu",
        dtype="float32",  # the ranks and one process compared to float rounding on every CPU (auto: bf16 on some)
        out_dir=str(out),
        progress=False,
    )
    return {**defaults, **kw}


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path, hook: str = "activations") -> dict[str, torch.Tensor]:
    return dict(SAE.load(run / hook).state_dict())


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    """One torchrun launch trains every architecture in ARCHS and PER_RANK_ARCHS on 2 ranks."""
    tmp = tmp_path_factory.mktemp("dp")
    g = torch.Generator().manual_seed(0)
    dirs_FD = torch.randn(F, D, generator=g)
    x_ND = (
        (torch.rand(1000, F, generator=g) < 0.06) * torch.rand(1000, F, generator=g)
    ) @ dirs_FD + 3.0
    np.save(tmp / "x.npy", x_ND.numpy())
    jobs = [
        {"config": train_config(tmp / f"ddp_{a}", a, **PER_RANK_ARCHS.get(a, {})), "data": str(tmp / "x.npy")}
        for a in (*ARCHS, *PER_RANK_ARCHS)
    ]
    np.save(tmp / "y.npy", transcoder_target(x_ND).numpy())
    jobs.append({"config": train_config(tmp / "ddp_transcoder", "topk", **TRANSCODER),
                 "data": {"x": str(tmp / "x.npy"), "y": str(tmp / "y.npy")}})
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    torchrun("_dist_train.py", str(tmp / "jobs.json"))
    return tmp, x_ND


@torchrun_slow
@pytest.mark.parametrize("arch", ARCHS)
def test_two_rank_training_equals_one_process_on_the_same_global_batches(two_rank_runs, arch):
    tmp, x_ND = two_rank_runs
    train(TrainConfig.from_dict(train_config(tmp / f"single_{arch}", arch)), x_ND)
    # Each rank trained on its own half of the global batch ...
    seen = [
        json.loads((tmp / f"ddp_{arch}" / f"rank{r}_first_batch.json").read_text()) for r in (0, 1)
    ]
    assert [s["rows"] for s in seen] == [32, 32] and seen[0]["first_row"] != seen[1]["first_row"]
    # ... and the averaged gradients give the single-process weights.
    ddp, single = weights(tmp / f"ddp_{arch}"), weights(tmp / f"single_{arch}")
    for name, w in single.items():
        torch.testing.assert_close(ddp[name], w, rtol=1e-4, atol=1e-5, msg=f"{arch} {name}")
    m_ddp, m_single = metrics(tmp / f"ddp_{arch}"), metrics(tmp / f"single_{arch}")
    assert [r["step"] for r in m_ddp] == [r["step"] for r in m_single] == list(range(5, 31, 5))
    for a, b in zip(m_ddp, m_single):  # metrics are reduced over ranks; only rank 0 wrote them
        for key in ("loss", "mse", "l0", "lr", "dead_fraction"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (arch, a["step"], key)


# A transcoder x -> y with a skip connection; with its encoder bias at zero (b_enc_init=zeros,
# not the centred default) latents are dead early, so AuxK (with its per-rank normaliser) is in
# the loss: the oracle is `per_rank_slices`.
TRANSCODER = dict(hooks=["x"], target_hook="y", skip=True, dead_window_tokens=128,
                  sae_options={"b_enc_init": "zeros"})


def transcoder_target(x_ND: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.relu(x_ND - 3.0) @ torch.randn(D, D, generator=g) + 0.5


@torchrun_slow
def test_two_rank_transcoder_equals_one_process_running_each_ranks_slice(two_rank_runs, monkeypatch):
    tmp, x_ND = two_rank_runs
    data = {"x": x_ND, "y": transcoder_target(x_ND)}
    with monkeypatch.context() as m:
        per_rank_slices(m, REGISTRY["topk"])
        train(TrainConfig.from_dict(train_config(tmp / "sliced_transcoder", "topk", **TRANSCODER)), data)
    ddp, sliced = weights(tmp / "ddp_transcoder", "x"), weights(tmp / "sliced_transcoder", "x")
    assert "W_skip" in sliced
    for name, w in sliced.items():
        torch.testing.assert_close(ddp[name], w, rtol=1e-4, atol=1e-5, msg=f"transcoder {name}")
    m_ddp, m_sliced = metrics(tmp / "ddp_transcoder"), metrics(tmp / "sliced_transcoder")
    assert [r["step"] for r in m_ddp] == [r["step"] for r in m_sliced]
    for a, b in zip(m_ddp, m_sliced):
        for key in ("loss", "mse", "auxk", "fvu", "l0", "dead_fraction"):
            assert a.get(key) == pytest.approx(b.get(key), rel=1e-4, abs=1e-6), (a["step"], key)
    assert max(r.get("auxk", 0) for r in m_ddp) > 0


def per_rank_slices(monkeypatch, sae_cls: type[SAE], world: int = WORLD) -> None:
    """Make one process train ``sae_cls`` as ``world`` data-parallel ranks do: the forward runs
    on each rank's contiguous slice of the batch (distributed.rank_slice) from the same state;
    the loss is the slices' mean (so the gradient is the ranks' averaged one), the floating
    buffers (BatchTopK's threshold) are averaged as distributed.average_buffers_ does, the fired
    masks OR-ed, the logged terms averaged as the trainer's _record does."""
    real = sae_cls.training_forward

    def forward(self, x_BD, *, target_BD=None, **kw):
        start = {n: b.clone() for n, b in self.named_buffers() if b.is_floating_point()}
        outs, ends = [], []
        targets = target_BD.chunk(world) if target_BD is not None else [None] * world
        for x_rows, y_rows in zip(x_BD.chunk(world), targets):
            with torch.no_grad():
                for n, b in self.named_buffers():
                    if n in start:
                        b.copy_(start[n])
            outs.append(real(self, x_rows, target_BD=y_rows, **kw))
            ends.append({n: b.clone() for n, b in self.named_buffers() if n in start})
        with torch.no_grad():
            for n, b in self.named_buffers():
                if n in start:
                    b.copy_(torch.stack([e[n] for e in ends]).mean(0))

        def mean(values):
            return torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in values]).mean()

        return TrainOutput(
            loss=torch.stack([o.loss for o in outs]).mean(),
            x_hat_BD=torch.cat([o.x_hat_BD for o in outs]),
            fired_F=torch.stack([o.fired_F for o in outs]).any(0),
            l0=mean(o.l0 for o in outs),
            fvu=mean(o.fvu for o in outs),
            losses={k: torch.stack([o.losses[k] for o in outs]).mean() for k in outs[0].losses},
        )

    monkeypatch.setattr(sae_cls, "training_forward", forward)


@torchrun_slow
@pytest.mark.parametrize("arch", sorted(PER_RANK_ARCHS))
def test_two_rank_batchtopk_equals_one_process_running_each_ranks_slice(two_rank_runs, arch,
                                                                        monkeypatch):
    tmp, x_ND = two_rank_runs
    kw = PER_RANK_ARCHS[arch]
    cfg = TrainConfig.from_dict(train_config(tmp / f"single_{arch}", arch, **kw))
    assert not cfg.use_fast_step("cpu")  # the oracle wraps the autograd step's forward
    train(cfg, x_ND)  # one process, the global batch's top-k
    with monkeypatch.context() as m:
        per_rank_slices(m, REGISTRY[arch])
        train(TrainConfig.from_dict(train_config(tmp / f"sliced_{arch}", arch, **kw)), x_ND)
    ddp, sliced = weights(tmp / f"ddp_{arch}"), weights(tmp / f"sliced_{arch}")
    for name, w in sliced.items():
        torch.testing.assert_close(ddp[name], w, rtol=1e-4, atol=1e-5, msg=f"{arch} {name}")
    m_ddp, m_sliced = metrics(tmp / f"ddp_{arch}"), metrics(tmp / f"sliced_{arch}")
    assert [r["step"] for r in m_ddp] == [r["step"] for r in m_sliced] == list(range(5, 31, 5))
    for a, b in zip(m_ddp, m_sliced):
        assert a.keys() == b.keys()
        for key in {"loss", "mse", "auxk", "l0", "fvu", "lr", "dead_fraction"} & a.keys():
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (arch, a["step"], key)
    assert max(r.get("auxk", 0) for r in m_ddp) > 0  # the per-rank AuxK normaliser was exercised
    # The oracle matters: the global batch's top-k trains other weights.
    single = weights(tmp / f"single_{arch}")
    assert max((ddp[n] - single[n]).abs().max().item() for n in single) > 1e-3


@torchrun_slow
def test_two_rank_resume_matches_and_another_world_size_is_refused(two_rank_runs):
    tmp, x_ND = two_rank_runs
    run = tmp / "ddp_relu"
    resumed = tmp / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "activations")  # keep only the checkpoints (steps 10, 20) and logs
    ckpts = sorted(p.name for p in (resumed / "checkpoints").iterdir())
    assert ckpts == ["step_000000010.pt", "step_000000020.pt"]
    assert torch.load(resumed / "checkpoints" / ckpts[-1], weights_only=False)["world_size"] == 2

    with pytest.raises(ValueError, match="2 process.*WORLD_SIZE=1.*same number of processes"):
        train(TrainConfig.from_dict(train_config(resumed, "relu", resume=True)), x_ND)

    jobs = [{"config": train_config(resumed, "relu", resume=True), "data": str(tmp / "x.npy")}]
    (tmp / "resume.json").write_text(json.dumps(jobs))
    torchrun("_dist_train.py", str(tmp / "resume.json"))
    for name, w in weights(run).items():
        torch.testing.assert_close(weights(resumed)[name], w, rtol=0, atol=0)
    assert metrics(resumed) == metrics(run)


def test_batch_size_not_divisible_by_the_world_size_names_the_field(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="batch_size=64: must be divisible.*WORLD_SIZE=3"):
        distributed.rank_slice(64, distributed.env_info())
    assert distributed.rank_slice(64, distributed.DistInfo(1, 2, 1)) == slice(32, 64)


# --- harvesting -----------------------------------------------------------------------------


def harvest_config(corpus: Path, **kw) -> dict:
    return dict(
        model="tiny-llama",
        hooks=["blocks.0.hook_resid_pre", "blocks.2.hook_resid_post"],
        dataset=str(corpus),
        context_size=24,
        tokens=500,
        batch_size=4,
        shard_tokens=64,
        device="cpu",
        **kw,
    )


def rows(cache: ActivationCache) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(token, context, position) triples and activations, sorted by (context, position)."""
    triples = np.stack([cache.token_ids, cache.context_ids, cache.positions], 1)
    order = np.lexsort((triples[:, 2], triples[:, 1]))
    return triples[order], {h: np.asarray(cache.activations(h)[:])[order] for h in cache.hook_names}


@pytest.fixture(scope="module")
def two_rank_harvest(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("harvest")
    (tmp / "corpus.txt").write_text(TEXT)
    (tmp / "cfg.json").write_text(json.dumps(harvest_config(tmp / "corpus.txt")))
    torchrun("_dist_harvest.py", str(tmp / "cfg.json"), str(tmp / "two"))
    return tmp


@torchrun_slow
def test_two_rank_harvest_equals_one_rank_harvest_of_the_same_tokens(two_rank_harvest):
    tmp = two_rank_harvest
    one = harvest(HarvestConfig(**harvest_config(tmp / "corpus.txt")), tmp / "one", progress=False)
    two = ActivationCache(tmp / "two", verify="full")
    assert two.complete and two.n_tokens == one.n_tokens == 500
    assert two.manifest["layout"]["ranks"] == ["rank_00000", "rank_00001"]
    assert sorted(
        {int(c) % 2 for c in ActivationCache(tmp / "two" / "rank_00001").context_ids}
    ) == [1]
    t1, a1 = rows(one)
    t2, a2 = rows(two)
    np.testing.assert_array_equal(t2, t1)
    for h in a1:
        np.testing.assert_allclose(a2[h], a1[h], rtol=1e-4, atol=1e-5)
    # The documented order: rank-major, (context, position) order within each rank.
    ctx = two.context_ids
    n0 = ActivationCache(tmp / "two" / "rank_00000").n_tokens
    assert (ctx[:n0] % 2 == 0).all() and (ctx[n0:] % 2 == 1).all()
    key = ctx.astype(np.int64) * 1000 + two.positions
    assert (np.diff(key[:n0]) > 0).all() and (np.diff(key[n0:]) > 0).all()
    # A training run reads the merged cache like any other.
    batch = next(two.iter_batches(two.hook_names, 128, seed=1))
    assert batch[two.hook_names[0]].shape == (128, two.widths[two.hook_names[0]])


@torchrun_slow
def test_a_crashed_rank_resumes_and_another_world_size_is_refused(two_rank_harvest):
    tmp = two_rank_harvest
    part = tmp / "partial"
    shutil.copytree(tmp / "two", part)
    # Roll rank 1 back to its first two shards, as if it had been killed there; drop the merge.
    (part / "manifest.json").unlink()
    mpath = part / "rank_00001" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["shards"] = m["shards"][:2]
    m["n_tokens"] = sum(s["n_tokens"] for s in m["shards"])
    m["complete"] = False
    last = np.load(part / "rank_00001" / "tokens" / "shard_00001.npy")[-1]
    m["last_committed"] = [int(last[1]), int(last[2])]
    mpath.write_text(json.dumps(m))

    with pytest.raises(ValueError, match="harvested by 2 process.*WORLD_SIZE=1"):
        harvest(HarvestConfig(**harvest_config(tmp / "corpus.txt")), part, progress=False)

    torchrun("_dist_harvest.py", str(tmp / "cfg.json"), str(part))
    full, resumed = ActivationCache(tmp / "two"), ActivationCache(part, verify="full")
    np.testing.assert_array_equal(resumed.context_ids, full.context_ids)
    np.testing.assert_array_equal(resumed.positions, full.positions)
    for h in full.hook_names:
        np.testing.assert_array_equal(resumed.activations(h)[:], full.activations(h)[:])


# --- distributed hooks (--distribute-hooks) -------------------------------------------------

HOOKS = {"h0": 16, "h1": 24, "h2": 16}  # name -> width; 2 ranks: rank 0 trains h0, h2; rank 1 h1


def rank_file(run: Path, rank: int, name: str):
    return json.loads((run / f"rank{rank}_{name}").read_text())


def all_weights(run: Path, hooks) -> dict[str, dict[str, torch.Tensor]]:
    return {h: weights(run, h) for h in hooks}


def assert_same_saes(a: dict, b: dict) -> None:
    """Bit for bit: each hook's SAE takes the same steps on the same batches from the same init."""
    assert sorted(a) == sorted(b)
    for h in a:
        for name, w in b[h].items():
            torch.testing.assert_close(a[h][name], w, rtol=0, atol=0, msg=f"{h} {name}")


@pytest.fixture(scope="module")
def by_hook_runs(tmp_path_factory, two_rank_harvest):
    """One torchrun launch: JumpReLU on 3 in-memory hooks (its target-L0 penalty would read the
    other rank's statistic if anything were still reduced), TopK on the 2 hooks of the
    2-rank harvested cache, and the refusals (1 hook for 2 ranks; --distribute-hooks resuming a
    run without it)."""
    tmp = tmp_path_factory.mktemp("by_hook")
    g = torch.Generator().manual_seed(1)
    data = {}
    for h, d in HOOKS.items():
        x_ND = ((torch.rand(1000, F, generator=g) < 0.06) * torch.rand(1000, F, generator=g)) @ (
            torch.randn(F, d, generator=g)) + 3.0
        np.save(tmp / f"{h}.npy", x_ND.numpy())
        data[h] = str(tmp / f"{h}.npy")
    arrays = {h: torch.from_numpy(np.load(p)) for h, p in data.items()}
    short = dict(tokens=64 * 12)  # one checkpoint, at step 10, without distribute_hooks
    train(TrainConfig.from_dict(train_config(tmp / "plain", "relu", **short)), arrays)
    jobs = [
        {"config": train_config(tmp / "jumprelu", "jumprelu", distribute_hooks=True), "data": data},
        {"config": train_config(tmp / "cache", "topk", distribute_hooks=True),
         "data": str(two_rank_harvest / "two")},
        {"config": train_config(tmp / "one_hook", "topk", distribute_hooks=True),
         "data": str(tmp / "h0.npy"), "expect_error": "1 hook.*WORLD_SIZE=2"},
        {"config": train_config(tmp / "plain", "relu", distribute_hooks=True, resume=True, **short),
         "data": data, "expect_error": "checkpoints of a run on 1 process.*without distribute_hooks"},
    ]
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    torchrun("_dist_train.py", str(tmp / "jobs.json"))
    return tmp, arrays


@torchrun_slow
def test_distributed_hooks_equal_one_process_training_every_hook(by_hook_runs):
    tmp, data = by_hook_runs
    run = tmp / "jumprelu"
    single = train(TrainConfig.from_dict(train_config(tmp / "single_jumprelu", "jumprelu")), data)
    # rank r trained hooks[r::2], each on whole global batches, and returned just those
    assert rank_file(run, 0, "trained.json") == {"h0": 64, "h2": 64}
    assert rank_file(run, 1, "trained.json") == {"h1": 64}
    assert rank_file(run, 0, "returned.json") == ["h0", "h2"]
    assert rank_file(run, 1, "returned.json") == ["h1"]
    assert_same_saes(all_weights(run, HOOKS), {h: dict(s.state_dict()) for h, s in single.items()})
    # rank 0 wrote one metrics.jsonl with every hook's records, in one process's order
    assert metrics(run) == metrics(tmp / "single_jumprelu")
    assert json.loads((run / "config.json").read_text())["widths"] == HOOKS
    ckpts = sorted(str(p.relative_to(run)) for p in (run / "checkpoints").rglob("*.pt"))
    assert ckpts == [f"checkpoints/rank_0000{r}/step_0000000{s}.pt" for r in (0, 1) for s in (10, 20)]
    assert sorted(torch.load(run / ckpts[0], weights_only=False)["hooks"]) == ["h0", "h2"]
    assert sorted(torch.load(run / ckpts[-1], weights_only=False)["hooks"]) == ["h1"]


@torchrun_slow
def test_distributed_hooks_on_a_cache_read_only_each_ranks_hook(by_hook_runs, two_rank_harvest):
    tmp, _ = by_hook_runs
    run, cache = tmp / "cache", two_rank_harvest / "two"
    hooks = ActivationCache(cache).hook_names
    single = train(TrainConfig.from_dict(train_config(tmp / "single_cache", "topk")), str(cache))
    assert_same_saes(all_weights(run, hooks), {h: dict(s.state_dict()) for h, s in single.items()})
    for r in (0, 1):
        shards = rank_file(run, r, "shards.json")
        assert shards and all(f"/acts/{hooks[r]}/" in p for p in shards), (r, shards)


@torchrun_slow
def test_distribute_hooks_without_torchrun_changes_nothing(by_hook_runs, tmp_path):
    _, data = by_hook_runs
    two = {h: data[h] for h in ("h0", "h1")}
    on = train(TrainConfig.from_dict(train_config(tmp_path / "on", "topk", distribute_hooks=True)), two)
    off = train(TrainConfig.from_dict(train_config(tmp_path / "off", "topk")), two)
    assert_same_saes({h: dict(s.state_dict()) for h, s in on.items()},
                     {h: dict(s.state_dict()) for h, s in off.items()})
    one = train(TrainConfig.from_dict(train_config(tmp_path / "one", "topk", distribute_hooks=True)), data["h0"])
    assert isinstance(one, SAE)  # one process, one hook: a bare SAE, as without the flag


@torchrun_slow
def test_distributed_hooks_refuse_too_few_hooks_and_a_checkpoint_without_them(by_hook_runs):
    tmp, _ = by_hook_runs
    for r in (0, 1):  # every rank raised the same error
        assert "1 hook(s) ['activations'] for WORLD_SIZE=2" in (
            tmp / "one_hook" / f"rank{r}_error.txt").read_text()
        assert "run on 1 process(es) without distribute_hooks" in (
            tmp / "plain" / f"rank{r}_error.txt").read_text()
    with pytest.raises(ValueError, match=r"3 hook\(s\).*WORLD_SIZE=4.*at most 3"):
        distributed.assign_hooks(["a", "b", "c"], distributed.DistInfo(0, 4, 0))
    assert distributed.assign_hooks(["a", "b", "c"], distributed.DistInfo(0, 2, 0)) == ["a", "c"]


@torchrun_slow
def test_distributed_hooks_resume_after_a_rank_died_mid_checkpoint(by_hook_runs):
    """Rank 1 died while writing step 20 (rank 0 had written it): the run resumes from step 10,
    the newest step on every rank, and ends equal to the uninterrupted run. A run without
    distribute_hooks (2 ranks, or 1 process) refuses these checkpoints."""
    tmp, data = by_hook_runs
    run, resumed = tmp / "jumprelu", tmp / "resumed"
    shutil.copytree(run, resumed)
    for h in HOOKS:
        shutil.rmtree(resumed / h)
    for p in resumed.glob("rank*_*.json"):  # the worker's records of the first run
        p.unlink()
    (resumed / "checkpoints" / "rank_00001" / "step_000000020.pt").unlink()
    hint = "distribute_hooks run on 2 processes.*distribute_hooks=True"
    with pytest.raises(ValueError, match=hint):
        train(TrainConfig.from_dict(train_config(resumed, "jumprelu", resume=True)), data)
    with pytest.raises(ValueError, match=hint):
        train(TrainConfig.from_dict(train_config(resumed, "jumprelu", resume=True, distribute_hooks=True)), data)
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run"):
        train(TrainConfig.from_dict(train_config(resumed, "jumprelu")), data)
    # rank 0 of 3 (collectives are no-ops in this process): its file says 2 processes
    cfg = TrainConfig.from_dict(train_config(resumed, "jumprelu", resume=True, distribute_hooks=True))
    with pytest.raises(ValueError, match="run on 2 process.*WORLD_SIZE=3.*same number"):
        resume.resume_point_by_hook(cfg, resumed, open_source(data, cfg), list(HOOKS),
                                      distributed.DistInfo(0, 3, 0))

    data_files = {h: str(tmp / f"{h}.npy") for h in HOOKS}
    jobs = [
        {"config": train_config(resumed, "jumprelu", resume=True), "data": data_files,
         "expect_error": hint},
        # checkpoint_every may change on resume: checkpoints now fall at steps 15 and 30
        {"config": train_config(resumed, "jumprelu", resume=True, distribute_hooks=True,
                                checkpoint_every=64 * 15), "data": data_files},
    ]
    (tmp / "resume.json").write_text(json.dumps(jobs))
    torchrun("_dist_train.py", str(tmp / "resume.json"))
    assert not (resumed / "rank0_trained.json").exists()  # no step 0: it resumed
    assert_same_saes(all_weights(resumed, HOOKS), all_weights(run, HOOKS))
    assert metrics(resumed) == metrics(run)
    # rank 0's step 20 belonged to the abandoned run: dropped on resume, not kept as "newest"
    for r in (0, 1):
        assert sorted(p.name for p in (resumed / "checkpoints" / f"rank_0000{r}").iterdir()) == [
            "step_000000010.pt", "step_000000015.pt"]
