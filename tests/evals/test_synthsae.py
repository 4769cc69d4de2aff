"""SynthSAEBench (evals.synthsae): the scores on hand-built cases with known answers, the
generator's statistics against its config on a small model, the CLI end to end at a small
size, one-line errors on bad input with no output left behind, and every score against
sae_lens.synthetic's evals on the same SAE and samples (needs the peers' interpreter)."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import no_peers, python_with

from saelens_lite.cli import main
from saelens_lite.evals.synthsae import SynthSAEConfig, SynthSAERun, abs_cosines, mcc, uniqueness
from saelens_lite.evals.synthsae.hierarchy import build_forest, compensated_rates, forest_size
from saelens_lite.evals.synthsae.metrics import ScoreAccumulator
from saelens_lite.evals.synthsae.model import (
    HELDOUT_STREAM,
    TRAIN_STREAM,
    orthogonality_grad,
    orthogonalize,
    zipf_rates,
)
from saelens_lite.saes import SAE, SAEConfig

ROOT = Path(__file__).resolve().parents[2]


def unit_rows(n: int, d: int, seed: int = 0) -> torch.Tensor:
    W = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return W / W.norm(dim=1, keepdim=True)


# ----------------------------------------------------------------------- scores, known answers


def test_a_permuted_rescaled_identity_decoder_has_mcc_1_and_uniqueness_1():
    W_true = unit_rows(50, 16)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    signs = torch.where(torch.arange(50) % 3 == 0, -2.5, 0.7)[:, None]  # |cos| ignores scale and sign
    A = abs_cosines(W_true[perm] * signs, W_true)
    assert mcc(A) == pytest.approx(1.0, abs=1e-6)
    assert uniqueness(A) == 1.0
    assert mcc(abs_cosines(W_true[perm[:20]], W_true)) == pytest.approx(1.0, abs=1e-6)  # F < G


def test_mcc_is_the_best_one_to_one_matching_found_by_brute_force():
    A = torch.rand(4, 6, generator=torch.Generator().manual_seed(2))
    best = max(sum(float(A[i, cols[i]]) for i in range(4)) for cols in itertools.permutations(range(6), 4)) / 4
    assert mcc(A) == pytest.approx(best, abs=1e-9)


@pytest.mark.parametrize("n_dup", [1, 3])
def test_each_duplicated_latent_lowers_uniqueness_by_exactly_its_share(n_dup):
    W_true = unit_rows(64, 32)
    F = 40
    W_dec = W_true[:F].clone()
    assert uniqueness(abs_cosines(W_dec, W_true)) == 1.0
    for i in range(n_dup):
        W_dec[10 + i] = W_true[i] + 0.01 * W_true[30]  # latent 10 + i now tracks feature i too
    assert uniqueness(abs_cosines(W_dec, W_true)) == pytest.approx(1 - n_dup / F, abs=1e-12)


def test_precision_recall_f1_accuracy_count_each_latent_against_its_best_feature():
    # latent 0 -> feature 1, latent 1 -> feature 0, latent 2 never fires
    best_F = torch.tensor([1, 0, 2])
    on_NG = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    acts_NF = torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0.5, 3.0, 0], [0, 0, 0]])
    acc = ScoreAccumulator(best_F, d=2)
    x = torch.ones(4, 2)
    acc.update(x, x, acts_NF, on_NG)
    r = acc.result()
    # latent 0: TP 2 (rows 0, 1), FP 1 (row 2), FN 0 -> P 2/3, R 1, F1 0.8, acc 3/4
    # latent 1: TP 1 (row 2), FP 0, FN 1 (row 0) -> P 1, R 1/2, F1 2/3, acc 3/4
    # latent 2: silent, its feature never on -> P = R = F1 = 0, acc 1
    assert r["precision"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert r["recall"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert r["f1"] == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    assert r["accuracy"] == pytest.approx((0.75 + 0.75 + 1) / 3)
    assert r["dead_latents"] == 1 and r["l0"] == pytest.approx(4 / 4) and r["true_l0"] == pytest.approx(4 / 4)


def test_explained_variance_and_shrinkage_summed_over_batches_equal_the_whole_sample_formulas():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 8, generator=g) + 5.0  # a large mean: the variance is about it
    x_hat = 0.8 * x + 0.1 * torch.randn(300, 8, generator=g)
    acc = ScoreAccumulator(torch.zeros(1, dtype=torch.long), d=8)
    for i in range(0, 300, 70):
        acc.update(x[i:i + 70], x_hat[i:i + 70], torch.ones(len(x[i:i + 70]), 1), torch.ones(len(x[i:i + 70]), 1) > 0)
    xd, hd = x.double(), x_hat.double()
    ev = 1 - ((xd - hd) ** 2).sum() / ((xd - xd.mean(0)) ** 2).sum()
    assert acc.result()["explained_variance"] == pytest.approx(float(ev), abs=1e-9)
    assert acc.result()["shrinkage"] == pytest.approx(float((hd.norm(dim=1) / xd.norm(dim=1)).mean()), abs=1e-9)


def test_a_decoder_of_the_wrong_width_is_refused_naming_its_shape():
    with pytest.raises(ValueError, match=r"shape \(4, 5\).*D=16"):
        abs_cosines(torch.randn(4, 5), unit_rows(8, 16))


# ----------------------------------------------------------------------- the generator


def test_orthogonalization_gradient_is_autograds_on_the_published_loss():
    g = torch.Generator().manual_seed(4)
    E = (unit_rows(30, 8, seed=4) * (1 + 0.1 * torch.rand(30, 1, generator=g))).double().requires_grad_(True)
    K = E @ E.T
    loss = ((K - torch.diag(torch.diag(K))) ** 2).sum() + 30 * ((torch.diag(K) - 1) ** 2).sum()
    loss.backward()
    torch.testing.assert_close(orthogonality_grad(E.detach()), E.grad)


def test_orthogonalization_lowers_the_overlap_and_keeps_unit_rows():
    E = unit_rows(20, 16, seed=5)
    out = orthogonalize(E, 100, 1e-2)
    off = lambda W: float(((W @ W.T) ** 2).sum() - len(W))  # noqa: E731
    assert off(out) < 0.5 * off(E)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(20))


def test_zipf_rates_and_the_forest_layout_follow_the_config():
    cfg = SynthSAEConfig.small()
    p = zipf_rates(cfg)
    assert p[0] == pytest.approx(cfg.p_max) and p[-1] == pytest.approx(cfg.p_min)
    assert bool((p[1:] <= p[:-1]).all())
    f = build_forest(3, 4, 2)
    assert f.starts == (0, 3, 15, 63) and forest_size(3, 4, 2) == 63
    parent = f.parent_of(70)
    assert parent[3:7].tolist() == [0] * 4 and parent[14].item() == 2 and parent[15:19].tolist() == [3] * 4
    assert parent[62].item() == 14 and parent[63:].tolist() == [-1] * 7
    assert f.children_of(torch.tensor([4])).tolist() == [[19, 20, 21, 22]]
    base = torch.full((63,), 0.1, dtype=torch.float64)
    comp = compensated_rates(base, f)
    assert comp[:3].tolist() == [0.1] * 3  # roots unchanged; children: 0.1/0.1 (1 + 3 * 0.1/0.1) -> 1
    assert comp[3:].tolist() == [1.0] * 60


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return SynthSAEConfig.small(corr_rank=0).build()


@pytest.fixture(scope="module")
def small_sample(small_model):
    xs, cs = zip(*[(x, c.dense()) for x, c in small_model.iter_batches(40_000, 8192, stream=TRAIN_STREAM)])
    return torch.cat(xs), torch.cat(cs)


def test_free_features_and_roots_fire_at_their_rates_within_a_binomial_ci(small_model, small_sample):
    _, c = small_sample
    m = small_model
    top = torch.cat([torch.arange(m.forest.n_roots), torch.arange(m.forest.n_features, m.cfg.n_features)])
    rate = (c[:, top] > 0).double().mean(0)
    p = m.p_G[top].double()
    # P(fire) is p times P(ReLU(mu + sigma N) > 0), which is 1 - Phi(-mu / sigma)
    keep = 1 - 0.5 * torch.erfc(m.mean_G[top].double() / m.std_G[top].double() / math.sqrt(2))
    expect = p * keep
    se = (expect * (1 - expect) / len(c)).sqrt()
    z = (rate - expect) / se
    assert float((z.abs() > 4).double().mean()) < 0.005, z.abs().max()
    assert abs(float(z.mean())) < 4 / math.sqrt(len(z))


def test_children_fire_only_with_their_parent_and_never_beside_a_sibling(small_model, small_sample):
    _, c = small_sample
    f = small_model.forest
    on = c > 0
    for a, b, e in zip(f.starts[:-2], f.starts[1:-1], f.starts[2:]):
        kids = on[:, b:e].view(len(c), -1, f.branching)
        assert not bool((kids & ~on[:, a:b, None]).any())
        assert int(kids.sum(-1).max()) <= 1
        assert bool(kids.any())
    parent = f.parent_of(small_model.cfg.n_features)
    kids_idx = (parent >= 0).nonzero().squeeze(1)
    n, j = c[:, kids_idx].nonzero(as_tuple=True)
    ratio = c[n, kids_idx[j]] / c[n, parent[kids_idx[j]]]  # scaled gate: child / parent = own draw / mean
    assert float(ratio.min()) > 0


def test_magnitudes_of_free_features_have_the_relu_normal_mean(small_model, small_sample):
    _, c = small_sample
    m = small_model
    free = torch.arange(m.forest.n_features, m.cfg.n_features)
    on = c[:, free] > 0
    mu, s = m.mean_G[free].double(), m.std_G[free].double()
    a = mu / s
    cdf = 0.5 * torch.erfc(-a / math.sqrt(2))
    pdf = torch.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    expect = (mu * cdf + s * pdf) / cdf  # E[ReLU(N(mu, s^2)) | > 0]
    got = (c[:, free].double().sum(0) / on.sum(0).clamp_min(1))
    weight = on.sum(0).double()
    assert float((weight * (got - expect)).sum() / weight.sum()) == pytest.approx(0.0, abs=0.02)
    assert m.mean_G[0] == pytest.approx(m.cfg.mean_start) and m.mean_G[-1] == pytest.approx(m.cfg.mean_end)


def test_samples_are_the_dictionary_sum_plus_bias_and_batches_are_reproducible(small_model, small_sample):
    x, c = small_sample
    torch.testing.assert_close(x[:500], c[:500] @ small_model.W_true_GD + small_model.bias_D, atol=1e-4, rtol=0)
    assert small_model.bias_D.norm() == pytest.approx(small_model.cfg.bias_norm, rel=1e-5)
    x2, _ = small_model.batch(8192, stream=TRAIN_STREAM, seed=0, index=1)
    torch.testing.assert_close(x2, x[8192:16384])
    x3, _ = small_model.batch(8192, stream=HELDOUT_STREAM, seed=0, index=1)
    assert not torch.equal(x2, x3)


# ----------------------------------------------------------------------- the command


SMALL = ["--features", "512", "--d", "32", "--batch-size", "512", "--eval-samples", "1000", "--model-cache", ""]


def test_the_cli_trains_scores_and_writes_its_table_at_a_small_size(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["bench", "synthsae", *SMALL, "--arch", "topk", "relu", "--width", "32", "--l0", "4",
                 "--samples", "4096", "--save-dir", str(tmp_path / "saes"), "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert [r["architecture"] for r in result["rows"]] == ["topk", "relu"]
    for r in result["rows"]:
        assert 0 < r["mcc"] <= 1 and 0 < r["uniqueness"] <= 1 and 0 <= r["f1"] <= 1, r
        assert r["heldout_samples"] == 1000 and r["training_samples"] == 4096
    # TopK keeps k latents and ReLU drops the non-positive ones: at most k, nearly always k
    assert 3.9 <= result["rows"][0]["l0"] <= 4.0
    table = out.with_suffix(".md").read_text()
    assert "1,000 held-out samples" in table and "4,096 streamed samples" in table
    assert table.count("\n| topk |") == 1 and table.count("\n| relu |") == 1
    assert table in capsys.readouterr().out
    assert SAE.load(tmp_path / "saes" / "relu" / "synthsae").cfg.d_sae == 32


def test_a_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_sae(tmp_path, monkeypatch):
    from saelens_lite.evals.synthsae import run as run_mod

    model = SynthSAEConfig.scaled(512, d=32).build()
    run = SynthSAERun(architectures=["topk"], samples=8 * 256, width=32, l0=4, batch_size=256, n_eval=500,
                      checkpoint_every=3 * 256)
    whole = run_mod.run_bench(model.cfg, run, save_dir=tmp_path / "whole")

    real = run_mod.SynthSAESource.batches

    def crash_after_5(self, batch_size, *, seed, start_batch=0, reuse=0):
        for i, b in enumerate(real(self, batch_size, seed=seed, start_batch=start_batch, reuse=reuse)):
            if start_batch + i == 5:
                raise RuntimeError("killed")
            yield b

    monkeypatch.setattr(run_mod.SynthSAESource, "batches", crash_after_5)
    with pytest.raises(RuntimeError, match="killed"):
        run_mod.run_bench(model.cfg, run, save_dir=tmp_path / "cut")
    starts = []

    def record(self, batch_size, *, seed, start_batch=0, reuse=0):
        starts.append(start_batch)
        return real(self, batch_size, seed=seed, start_batch=start_batch, reuse=reuse)

    monkeypatch.setattr(run_mod.SynthSAESource, "batches", record)
    assert list((tmp_path / "cut" / "topk" / "checkpoints").iterdir())  # the step-3 checkpoint survived
    resumed = run_mod.run_bench(model.cfg, SynthSAERun(**{**run.__dict__, "resume": True}), save_dir=tmp_path / "cut")
    a = SAE.load(tmp_path / "whole" / "topk" / "synthsae").state_dict()
    b = SAE.load(tmp_path / "cut" / "topk" / "synthsae").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["rows"][0]["mcc"] == whole["rows"][0]["mcc"]
    assert starts == [3]  # it went on from the checkpoint, not from the start


def test_checkpoints_or_resume_without_a_save_dir_are_refused_before_any_work():
    from saelens_lite.evals.synthsae.run import run_bench

    cfg = SynthSAEConfig.scaled(512, d=32)
    for kw in ({"checkpoint_every": 1024}, {"resume": True}):
        with pytest.raises(ValueError, match="--save-dir"):
            run_bench(cfg, SynthSAERun(architectures=["topk"], samples=1024, width=32, l0=4, **kw))
    with pytest.raises(ValueError, match="checkpoint_every=-1"):
        SynthSAERun(checkpoint_every=-1)


def _small_sae(d_in: int, tmp_path: Path) -> Path:
    sae = SAE.from_config(SAEConfig.build(architecture="topk", d_in=d_in, d_sae=24, k=3))
    return sae.save(tmp_path / "sae")


@pytest.mark.parametrize("args,named", [
    (["--arch", "topk", "nope"], "'nope'"),
    (["--arch", "topk", "--width", "32", "--l0", "64"], "l0=64"),
    (["--sae", "SAE16"], "d_in=16"),
])
def test_bad_input_is_one_line_naming_the_value_and_writes_nothing(tmp_path, capsys, args, named):
    args = [str(_small_sae(16, tmp_path)) if a == "SAE16" else a for a in args]
    out = tmp_path / "res"
    assert main(["bench", "synthsae", *SMALL, "--samples", "1024", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err
    assert not list(tmp_path.glob("res*"))


def test_a_saved_sae_is_scored_without_training(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["bench", "synthsae", *SMALL, "--sae", str(_small_sae(32, tmp_path)), "--out", str(out)]) == 0
    (row,) = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert row["architecture"] == "topk" and row["l0"] == pytest.approx(3.0) and row["heldout_samples"] == 1000


@pytest.mark.parametrize("name,stem", [("l1_3.5", "l1_3.5"), ("res.json", "res")])
def test_out_gains_json_and_md_after_its_whole_name(tmp_path, capsys, name, stem):
    assert main(["bench", "synthsae", *SMALL, "--sae", str(_small_sae(32, tmp_path)),
                 "--out", str(tmp_path / "out" / name)]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{stem}.json", f"{stem}.md"]


def test_the_benchmark_run_refuses_k_above_the_width_naming_both():
    with pytest.raises(ValueError, match="l0=9.*width 8"):
        SynthSAERun(width=8, l0=9)


# ----------------------------------------------------------------------- against sae_lens.synthetic


SYNTHETIC = "import sae_lens.synthetic"


@pytest.mark.slow  # runs the peers interpreter in a process
def test_every_score_matches_sae_lens_synthetic_on_the_same_sae_and_samples(tmp_path):
    python = python_with(SYNTHETIC)
    if python is None:
        no_peers("no interpreter with sae_lens.synthetic (.venv-peers, SAELENS_LITE_PEERS_PYTHON)")
    model = SynthSAEConfig.scaled(512, d=32).build()
    sae = SAE.from_config(SAEConfig.build(architecture="topk", d_in=32, d_sae=48, k=4))
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():  # near some true features, so MCC, F1 and EV are far from 0
        sae.W_dec.copy_(model.W_true_GD[:48] + 0.3 * torch.randn(48, 32, generator=g) / math.sqrt(32))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(model.bias_D)
    folder = sae.save(tmp_path / "sae")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "synthsae_vs_saelens.py"), "metrics", "--features", "512",
                    "--d", "32", "--sae", str(folder), "--eval-samples", "3000", "--peers-python", python,
                    "--out", str(tmp_path / "cmp")], check=True, capture_output=True, cwd=ROOT,
                   env=os.environ | {"OMP_NUM_THREADS": "1"})
    res = json.loads((tmp_path / "cmp" / "metrics.json").read_text())
    assert res["ours"]["mcc"] > 0.5 and res["ours"]["f1"] > 0.05 and res["ours"]["explained_variance"] > 0.2
    assert res["max_abs_diff"] < 1e-3, res["abs_diff"]


@pytest.mark.slow  # runs SAELens' trainer in the peers interpreter, three times in one process
def test_the_saelens_runner_seed_fixes_its_sae_and_another_seed_changes_it(tmp_path, monkeypatch):
    """The jobs `runner ... --seed S` builds (seeds 1, 1, 2), run by its worker
    (scripts/synthsae_vs_saelens.py worker_runner) in one peers process."""
    python = python_with(SYNTHETIC)
    if python is None:
        pytest.skip("no interpreter with sae_lens.synthetic (.venv-peers, SAELENS_LITE_PEERS_PYTHON)")
    from safetensors.torch import load_file

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import synthsae_vs_saelens as script

    jobs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        (tmp_path / name).mkdir()
        args = script.build_parser().parse_args(
            ["runner", "--features", "512", "--d", "32", "--width", "64", "--l0", "4", "--samples", "4096",
             "--their-eval-samples", "0", "--seed", str(seed), "--model-cache", "", "--out", str(tmp_path / name)])
        jobs.append(script.runner_job(args, tmp_path / name)[1])
    code = f"""
import json, sys
sys.path.insert(0, {str(ROOT / "scripts")!r})
import synthsae_vs_saelens as s
for job in json.loads({json.dumps(json.dumps(jobs))}):
    s.worker_runner(job)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    subprocess.run([python, "-c", code], check=True, capture_output=True, cwd=tmp_path, env=env)
    a, b, c = (load_file(tmp_path / n / "sae" / "sae_weights.safetensors")["W_dec"] for n in "abc")
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2


@pytest.mark.slow  # runs the peers interpreter in a process
def test_the_saelens_runner_fed_our_samples_trains_on_exactly_our_training_stream(tmp_path):
    python = python_with(SYNTHETIC)
    if python is None:
        pytest.skip("no interpreter with sae_lens.synthetic (.venv-peers, SAELENS_LITE_PEERS_PYTHON)")
    from dataclasses import asdict

    cfg = SynthSAEConfig.scaled(512, d=32)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"config": asdict(cfg), "seed": 3, "model_cache": ""}))
    code = f"""
import json, sys, torch
sys.path.insert(0, {str(ROOT / "scripts")!r})
import synthsae_vs_saelens as s
import sae_lens.synthetic.synthetic_sae_runner as runner_mod
s._feed_our_samples(json.load(open({str(job)!r})))
it = runner_mod.SyntheticActivationIterator(None, None, 128)
torch.save(torch.stack([next(it) for _ in range(3)]), {str(tmp_path / "batches.pt")!r})
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    subprocess.run([python, "-c", code], check=True, capture_output=True, cwd=tmp_path, env=env)
    theirs = torch.load(tmp_path / "batches.pt")
    model = cfg.build()
    for b in range(3):
        assert torch.equal(theirs[b], model.batch(128, stream=TRAIN_STREAM, seed=3, index=b)[0])
    assert not torch.equal(theirs[0], model.batch(128, stream=TRAIN_STREAM, seed=0, index=0)[0])


@pytest.mark.slow  # runs SAELens' trainer in the peers interpreter
def test_runner_options_reach_saelens_runner_and_sae_configs(tmp_path):
    python = python_with(SYNTHETIC)
    if python is None:
        pytest.skip("no interpreter with sae_lens.synthetic (.venv-peers, SAELENS_LITE_PEERS_PYTHON)")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "synthsae_vs_saelens.py"), "runner", "--arch", "jumprelu",
                    "--features", "512", "--d", "32", "--width", "64", "--l0", "4", "--samples", "2048",
                    "--eval-samples", "512", "--their-eval-samples", "0", "--lr", "0.002", "--option", "l0_coefficient=0.5",
                    "--runner-option", "dead_feature_window=7", "--model-cache", "", "--peers-python", python,
                    "--out", str(tmp_path / "r")], check=True, capture_output=True, cwd=ROOT,
                   env=os.environ | {"OMP_NUM_THREADS": "1"})
    runner = json.loads((tmp_path / "r" / "sae" / "runner_config.json").read_text())
    assert runner["dead_feature_window"] == 7 and runner["lr"] == 0.002
    theirs = json.loads((tmp_path / "r" / "runner_peer.json").read_text())["sae_config"]
    assert theirs["l0_coefficient"] == 0.5 and theirs["target_l0"] == 4.0  # the quadratic target is the --l0
    assert "their_eval" not in json.loads((tmp_path / "r" / "runner_peer.json").read_text())


@pytest.mark.slow  # trains sparsify's SAE in the peers interpreter
def test_sparsify_trains_on_our_training_stream_and_its_sae_is_scored(tmp_path):
    """`sparsify`: the worker hands train_sparsify our training stream's batches (seed --seed), and
    the command scores the SAE sparsify saved (TopK: L0 exactly k; it has learnt to reconstruct)."""
    python = python_with("import sparsify")
    if python is None:
        pytest.skip("no interpreter with sparsify (.venv-peers, SAELENS_LITE_PEERS_PYTHON)")
    from dataclasses import asdict

    cfg = SynthSAEConfig.scaled(512, d=32)
    job = {"config": asdict(cfg), "width": 64, "l0": 4, "samples": 3 * 128, "batch_size": 128, "lr": None,
           "seed": 3, "model_cache": "", "options": {}, "out": str(tmp_path / "unused")}
    code = f"""
import json, sys, torch
sys.path.insert(0, {str(ROOT / "scripts")!r})
import quality_vs_peers, synthsae_vs_saelens as s
seen = []
class Stop(Exception):
    pass
def fake(batches, d_in, num_latents, k, **kw):
    seen.extend(batches)
    raise Stop
quality_vs_peers.train_sparsify = fake
try:
    s.worker_sparsify(json.loads({json.dumps(json.dumps(job))}))
except Stop:
    torch.save(torch.stack(seen), {str(tmp_path / "batches.pt")!r})
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    subprocess.run([python, "-c", code], check=True, capture_output=True, cwd=tmp_path, env=env)
    seen = torch.load(tmp_path / "batches.pt")
    model = cfg.build()
    assert seen.shape == (3, 128, 32)
    for b in range(3):
        assert torch.equal(seen[b], model.batch(128, stream=TRAIN_STREAM, seed=3, index=b)[0])

    subprocess.run([sys.executable, str(ROOT / "scripts" / "synthsae_vs_saelens.py"), "sparsify", "--features", "512",
                    "--d", "32", "--width", "64", "--l0", "4", "--samples", "8192", "--eval-samples", "2048",
                    "--model-cache", "", "--peers-python", python, "--out", str(tmp_path / "r")],
                   check=True, capture_output=True, cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"})
    res = json.loads((tmp_path / "r" / "sparsify.json").read_text())
    assert res["theirs"]["steps"] == 8 and res["theirs"]["lr"] == pytest.approx(5e-3 / (64 / 2**14) ** 0.5)
    row = res["scored_by_us"]
    assert row["l0"] == pytest.approx(4.0) and row["heldout_samples"] == 2048
    # trained 8 steps: 0.59 here; b_dec alone (an SAE whose codes reconstruct nothing) explains 0
    assert row["explained_variance"] > 0.3
