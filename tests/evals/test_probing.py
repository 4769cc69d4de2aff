"""Sparse probing (``saelens_lite.evals.probing``, ``saelens-lite bench probing``): the probe math on
synthetic data with known answers, the split and pooling against loops, the harvested rows
against one unpadded forward per text, the pipeline on two small CSV datasets with tiny-llama
(resumed from its caches), one real shipped dataset, the CLI end to end and its bad inputs."""

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
import torch

from saelens_lite.cli import main
from saelens_lite.evals.probing import acts, data
from saelens_lite.evals.probing.probes import ProbeConfig, fit_probe, mean_diff_order, sparse_probes
from saelens_lite.evals.probing.run import ProbingConfig, encode_pooled, run_probing

pytestmark = pytest.mark.usefixtures("one_thread")

HOOK = "blocks.1.hook_resid_post"


# -- the probe math ------------------------------------------------------------------------------

def _label_feature_data(seed=0, n=400, F=50, col=7):
    rng = np.random.default_rng(seed)
    y_N = rng.integers(0, 2, n)
    z_NF = rng.exponential(1.0, (n, F)) * (rng.random((n, F)) < 0.3)
    z_NF[:, col] = y_N * 3.0
    return z_NF, y_N


def test_mean_difference_picks_the_feature_that_is_the_label():
    z_NF, y_N = _label_feature_data()
    assert mean_diff_order(z_NF, y_N)[0] == 7


def test_k1_probe_on_the_label_feature_has_auc_1():
    z_NF, y_N = _label_feature_data()
    res = sparse_probes(z_NF[:300], y_N[:300], z_NF[300:], y_N[300:], [1, 4], ProbeConfig())
    assert res["latents"][0] == 7
    assert res["k=1"].auc == 1.0 and res["k=1"].accuracy == 1.0
    assert res["all"].auc > 0.99  # the label feature is among all the latents


def test_mean_difference_ranks_by_absolute_difference():
    # column 0: means 0 / 1 (diff 1); column 1: means 5 / 2 (|diff| 3); column 2: constant
    z_NF = np.array([[0, 5, 1], [0, 5, 1], [1, 2, 1], [1, 2, 1]], float)
    assert list(mean_diff_order(z_NF, np.array([0, 0, 1, 1]))) == [1, 0, 2]


def test_probe_on_noise_is_at_chance():
    rng = np.random.default_rng(1)
    x_ND, y_N = rng.normal(size=(1200, 20)), rng.integers(0, 2, 1200)
    s = fit_probe(x_ND[:800], y_N[:800], x_ND[800:], y_N[800:])
    assert abs(s.auc - 0.5) < 0.1  # 400 test examples: the AUC's standard error is ~0.03


def test_dense_probe_finds_a_separating_direction():
    rng = np.random.default_rng(2)
    x_ND = rng.normal(size=(800, 30))
    y_N = (x_ND @ rng.normal(size=30) > 0).astype(int)
    s = fit_probe(x_ND[:600], y_N[:600], x_ND[600:], y_N[600:])
    assert s.auc > 0.97 and s.accuracy > 0.9


def test_k_larger_than_the_latents_is_refused():
    z_NF, y_N = _label_feature_data(F=8)
    with pytest.raises(ValueError, match="k=16 is outside 1..8"):
        sparse_probes(z_NF[:300], y_N[:300], z_NF[300:], y_N[300:], [1, 16])


# -- split, pooling, reading ---------------------------------------------------------------------

def test_split_is_balanced_disjoint_and_seeded():
    y_N = np.array([0] * 700 + [1] * 300)
    tr, te = data.split_indices(y_N, max_examples=400, test_fraction=0.25, seed=3)
    assert len(tr) + len(te) == 400 and not set(tr) & set(te)
    assert y_N[tr].sum() == 150 and y_N[te].sum() == 50  # half per label, split per label
    tr2, te2 = data.split_indices(y_N, max_examples=400, test_fraction=0.25, seed=3)
    assert (tr == tr2).all() and (te == te2).all()
    # a small class gives up its share to the other
    tr3, te3 = data.split_indices(np.array([0] * 50 + [1] * 10), max_examples=40, test_fraction=0.5, seed=0)
    assert len(tr3) + len(te3) == 40 and np.concatenate([tr3, te3]).__ge__(50).sum() == 10


def test_pool_matches_a_loop_in_numpy_and_torch():
    rng = np.random.default_rng(4)
    lengths = [3, 1, 5, 2]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    x_TF = rng.normal(size=(offsets[-1], 6)).astype(np.float32)
    want_mean = np.stack([x_TF[a:b].mean(0) for a, b in zip(offsets[:-1], offsets[1:])])
    want_last = np.stack([x_TF[b - 1] for b in offsets[1:]])
    np.testing.assert_allclose(acts.pool(x_TF, offsets, "mean"), want_mean, rtol=1e-6)
    np.testing.assert_allclose(acts.pool(torch.from_numpy(x_TF), offsets, "mean").numpy(), want_mean, rtol=1e-6)
    np.testing.assert_array_equal(acts.pool(x_TF, offsets, "last"), want_last)
    sub = acts.TokenRows(x_TF, offsets).select(np.array([2, 0]))
    np.testing.assert_array_equal(sub.rows_TD, np.concatenate([x_TF[4:9], x_TF[0:3]]))
    assert list(sub.offsets) == [0, 5, 8]


def _write(path, rows):
    pd.DataFrame(rows, columns=["prompt", "target"]).to_csv(path, index=False)


def _datasets(folder, n=48):
    """Two small binary datasets (string and 0/1 targets) and a numeric one."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    animals, words = ["cat", "dog", "horse", "bird"], ["seven", "nine", "two", "four"]
    _write(folder / "1_animals.csv", [(f"the {rng.choice(animals)} sat {rng.choice(['here', 'down'])}", 1)
                                      for _ in range(n)] + [(f"count {rng.choice(words)} {rng.choice(words)}", 0)
                                                            for _ in range(n)])
    _write(folder / "2_letters.csv", [("ab " * int(rng.integers(1, 4)) + "zz", "yes") for _ in range(n)]
           + [("cd " * int(rng.integers(1, 4)) + "qq", "no") for _ in range(n)])
    _write(folder / "3_numeric.csv", [(f"town {i}", float(i) * 1.5) for i in range(n)])
    return folder


def test_load_dataset_labels_by_sorted_value_and_skips_numeric(tmp_path):
    folder = _datasets(tmp_path / "d")
    ds = data.load_dataset("2_letters", folder)
    assert ds.classes == ("no", "yes") and ds.y_N[: 48].tolist() == [1] * 48
    assert data.list_datasets(folder) == ["1_animals", "2_letters", "3_numeric"]
    with pytest.raises(data.NotBinaryError, match="3_numeric"):
        data.load_dataset("3_numeric", folder)
    assert data.default_datasets(folder, min_per_class=40) == ["1_animals", "2_letters"]
    assert data.default_datasets(folder, min_per_class=49) == []
    with pytest.raises(ValueError, match="unknown dataset '1_animal'.*closest: 1_animals"):
        data.load_dataset("1_animal", folder)


@pytest.mark.skipif(importlib.util.find_spec("sae_probes") is None, reason="sae-probes wheel not installed")
def test_a_real_shipped_dataset_reads_as_balanced_binary():
    ds = data.load_dataset("113_movie_sent")
    assert len(ds.texts) == len(ds.y_N) == 5000 and ds.y_N.sum() == 2500
    assert ds.classes == ("0", "1") and all(isinstance(t, str) and t for t in ds.texts[:50])
    with pytest.raises(data.NotBinaryError):
        data.load_dataset("15_us_population")
    assert "113_movie_sent" in data.list_datasets() and len(data.list_datasets()) == 155


# -- activations ---------------------------------------------------------------------------------

def test_harvested_rows_match_one_unpadded_forward_per_text(tiny_llama):
    from saelens_lite.lm.hooks import capture

    texts = ["a", "the cat sat on the mat", "hello there", "x" * 40]
    got = acts.harvest_rows(tiny_llama, HOOK, texts, poolings=("last", "mean"), max_tokens=16, batch_tokens=64,
                            progress=False)
    for i, t in enumerate(texts):
        ids = acts.tokenize(tiny_llama.tokenizer, [t], 16)[0]
        assert len(ids) <= 16 and ids[0] == tiny_llama.tokenizer.bos_token_id
        a_SD = capture(tiny_llama.model, {"input_ids": torch.tensor([ids])}, [HOOK])[HOOK][0, 1:].numpy()
        np.testing.assert_allclose(got["last"].rows_TD[i], a_SD[-1], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(acts.pool(got["mean"].rows_TD, got["mean"].offsets, "mean")[i],
                                   a_SD.mean(0), rtol=1e-4, atol=1e-5)
    # a long text keeps its last tokens, so its last row is its own last token's
    assert acts.tokenize(tiny_llama.tokenizer, ["abcdefghij"], 4)[0][1:] == \
        acts.tokenize(tiny_llama.tokenizer, ["hij"], 4)[0][1:]


def test_mean_pooled_latents_average_the_tokens_latents_in_any_chunking():
    from saelens_lite.saes import SAE, SAEConfig

    sae = SAE.from_config(SAEConfig.build(architecture="topk", d_in=8, d_sae=32, k=3))
    rng = np.random.default_rng(5)
    offsets = np.array([0, 3, 4, 9, 11])
    rows = acts.TokenRows(rng.normal(size=(11, 8)).astype(np.float32), offsets)
    with torch.no_grad():
        z_TF = sae.encode(torch.from_numpy(rows.rows_TD)).numpy()
    want = np.stack([z_TF[a:b].mean(0) for a, b in zip(offsets[:-1], offsets[1:])])
    for chunk in (1, 4, 100):
        np.testing.assert_allclose(encode_pooled(sae, rows, "mean", chunk_rows=chunk), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(encode_pooled(sae, rows, "last", chunk_rows=4), z_TF[offsets[1:] - 1], atol=1e-6)


# -- the pipeline and the CLI --------------------------------------------------------------------

def _sae(path, d_in=64, d_sae=128, arch="topk"):
    from saelens_lite.saes import SAE, SAEConfig

    SAE.from_config(SAEConfig.build(architecture=arch, d_in=d_in, d_sae=d_sae, k=4, hook_name=HOOK)).save(path)
    return str(path)


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.suffix in (".npy", ".json")}


def test_pipeline_on_two_datasets_then_resumes_from_its_caches(tmp_path):
    folder = _datasets(tmp_path / "d")
    saes = [_sae(tmp_path / "topk"), _sae(tmp_path / "dense", arch="dense")]
    cfg = ProbingConfig(model="tiny-llama", data_dir=str(folder), min_per_class=40, ks=[1, 2], pooling="both",
                        max_examples=80, seed=1)
    probe_cfg = ProbeConfig(cs=[0.1, 1.0], folds=2)
    res = run_probing(saes, cfg, tmp_path / "out", probe_cfg=probe_cfg)
    rows = res["rows"]
    # per dataset and pooling: one dense probe, and k=1, k=2, all for each autoencoder
    assert len(rows) == 2 * 2 * (1 + 2 * 3)
    assert {r["dataset"] for r in rows} == {"1_animals", "2_letters"}
    r = next(r for r in rows if r["dataset"] == "1_animals")
    assert (r["n_train"], r["n_test"], r["n_train_pos"], r["n_test_pos"]) == (60, 20, 30, 10)
    assert all(0 <= r["auc"] <= 1 and 0 <= r["accuracy"] <= 1 for r in rows)
    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == rows and (out / "auc_vs_k.png").stat().st_size > 0
    md = (out / "results.md").read_text()
    assert "| 1_animals | 60 (30) | 20 (10) |" in md and "mean of 2" in md
    before = _mtimes(out / "activations") | _mtimes(out / "results")
    again = run_probing(saes, cfg, out, probe_cfg=probe_cfg)
    assert again["rows"] == rows and _mtimes(out / "activations") | _mtimes(out / "results") == before
    # another k list is another result file (never a stale one), on the same cached activations
    more = run_probing(saes, ProbingConfig(**{**cfg.__dict__, "ks": [1, 4]}), out, probe_cfg=probe_cfg)
    assert {r["probe"] for r in more["rows"]} == {"dense", "k=1", "k=4", "all"}
    assert _mtimes(out / "activations") == {p: t for p, t in before.items() if "activations" in str(p)}


def test_a_training_subset_is_balanced_inside_the_training_split_and_keeps_every_test_text():
    from saelens_lite.evals.probing.splits import Split

    y_N = np.array([1, 0] * 30 + [1] * 10 + [0] * 10)  # 60 training texts, then 20 test texts
    split = Split(np.arange(80) + 100, 60, y_N)
    pick = split.subset(10, seed=0)
    train, test = pick[:10], pick[10:]
    assert list(test) == list(range(60, 80)) and (np.diff(train) > 0).all() and train.max() < 60
    assert y_N[train].sum() == 5
    assert list(split.subset(10, seed=0)) == list(pick)
    assert list(split.subset(10, seed=1)) != list(pick) and list(split.subset(12, seed=0))[:10] != list(train)
    skewed = Split(np.arange(30), 20, np.array([1] * 4 + [0] * 16 + [1, 0] * 5))  # 4 positive training texts
    assert skewed.y_N[skewed.subset(10, seed=0)[:10]].sum() == 4  # as many as there are


def test_train_sizes_refit_every_probe_on_subsets_and_resume(tmp_path):
    folder = _datasets(tmp_path / "d")
    saes = [_sae(tmp_path / "topk")]
    cfg = ProbingConfig(model="tiny-llama", data_dir=str(folder), min_per_class=40, ks=[1, 2], pooling="last",
                        max_examples=80, seed=1, train_sizes=[8, 20, 60])
    probe_cfg = ProbeConfig(cs=[0.1, 1.0], folds=2)
    out = tmp_path / "out"
    res = run_probing(saes, cfg, out, probe_cfg=probe_cfg)
    full = run_probing(saes, ProbingConfig(**{**cfg.__dict__, "train_sizes": []}), tmp_path / "plain",
                       probe_cfg=probe_cfg)
    assert res["rows"] == full["rows"]  # the full-split rows do not change
    scarce = res["scarce_rows"]
    # 60 is the whole training split: skipped; per dataset and size one dense and k=1, k=2, all
    assert {r["train_size"] for r in scarce} == {8, 20} and len(scarce) == 2 * 2 * (1 + 3)
    for r in scarce:
        assert (r["n_train"], r["n_train_pos"], r["n_test"], r["n_test_pos"]) == (r["train_size"],
                                                                                 r["train_size"] // 2, 20, 10)
    # the dense probe of size 8 on 1_animals: refitted here on the subset's own pooled rows
    from saelens_lite.evals.probing.splits import Split

    ds = data.load_dataset("1_animals", folder)
    tr, te = data.split_indices(ds.y_N, max_examples=80, test_fraction=0.25, seed=1)
    idx = np.concatenate([tr, te])
    tok = acts.pooled_rows(None, HOOK, ds.name, ds.texts, idx, poolings=("last",), cache_dir=out / "activations",
                           model_name="tiny-llama", max_tokens=cfg.max_tokens, batch_tokens=cfg.batch_tokens)["last"]
    x_ND, y_N = acts.pool(tok.rows_TD, tok.offsets, "last"), ds.y_N[idx]
    pick = Split(idx, len(tr), y_N).subset(8, seed=1)
    want = fit_probe(x_ND[pick[:8]], y_N[pick[:8]], x_ND[pick[8:]], y_N[pick[8:]], probe_cfg, seed=1)
    got = next(r for r in scarce if (r["dataset"], r["sae"], r["train_size"]) == ("1_animals", "dense probe", 8))
    assert got["C"] == want.c  # the same fit in this process; AUC and accuracy to float tolerance
    assert (got["auc"], got["accuracy"]) == pytest.approx((want.auc, want.accuracy), abs=1e-9)
    md = (out / "results.md").read_text()
    assert "## Training-set size" in md and "| dense probe | dense |" in md and "full (60)" in md
    assert (out / "auc_vs_train_size.png").stat().st_size > 0 and not (tmp_path / "plain" / "auc_vs_train_size.png").exists()
    before = _mtimes(out / "results")
    assert run_probing(saes, cfg, out, probe_cfg=probe_cfg)["scarce_rows"] == scarce
    assert _mtimes(out / "results") == before


def test_class_imbalance_draws_hold_the_fraction_at_the_largest_size_every_fraction_allows():
    from saelens_lite.evals.probing.splits import Split

    y_N = np.array([1] * 40 + [0] * 60 + [1, 0] * 10)  # 100 training texts (40 positive), then 20 test texts
    split = Split(np.arange(120), 100, y_N)
    fractions = [0.1, 0.3, 0.9]
    n = split.imbalance_size(fractions)
    brute = max(m for m in range(1, 101) if all(np.ceil(f * m) <= 40 and m - np.ceil(f * m) <= 60 for f in fractions))
    assert n == brute == 44  # 0.9 of 44 -> 40 positive; 45 would need 41
    for f in fractions:
        pick = split.imbalanced(n, f, seed=3)
        train, test = pick[:n], pick[n:]
        assert list(test) == list(range(100, 120)) and (np.diff(train) > 0).all() and train.max() < 100
        assert y_N[train].sum() == int(np.ceil(f * n))
        assert list(split.imbalanced(n, f, seed=3)) == list(pick) and list(split.imbalanced(n, f, 3, 1)) != list(pick)


def test_label_noise_flips_exactly_that_share_of_the_training_labels_only():
    from saelens_lite.evals.probing.splits import Split

    y_N = np.array([1, 0] * 50 + [1, 0] * 10)
    split = Split(np.arange(120), 100, y_N)
    for f in (0.05, 0.25, 0.5):
        noisy = split.noisy_labels(f, seed=0)
        assert (noisy[:100] != y_N[:100]).sum() == int(f * 100) and (noisy[100:] == y_N[100:]).all()
        assert (split.noisy_labels(f, seed=0) == noisy).all() and (split.noisy_labels(f, 0, 1) != noisy).any()
    assert (split.noisy_labels(0.3, seed=0) == split.y_N).sum() == 120 - 30 and (split.y_N == y_N).all()


def test_imbalance_noise_and_draws_refit_every_probe_and_resume(tmp_path):
    from saelens_lite.evals.probing import report
    from saelens_lite.evals.probing.splits import Split

    folder = _datasets(tmp_path / "d")
    saes = [_sae(tmp_path / "topk")]
    cfg = ProbingConfig(model="tiny-llama", data_dir=str(folder), min_per_class=40, ks=[1, 2], pooling="last",
                        max_examples=80, seed=1, pos_fractions=[0.1, 0.5], label_noise=[0.2], draws=2)
    probe_cfg = ProbeConfig(cs=[0.1, 1.0], folds=2)
    out = tmp_path / "out"
    res = run_probing(saes, cfg, out, probe_cfg=probe_cfg)
    imb, noise = res["imbalance_rows"], res["noise_rows"]
    assert "scarce_rows" not in res and "ood_rows" not in res
    # 2 datasets x (2 fractions x 2 draws) x (dense + k=1, k=2, all); the split is 30 / 30, so n = 33
    assert len(imb) == 2 * 4 * 4 and {(r["pos_fraction"], r["draw"]) for r in imb} == {(f, d) for f in (0.1, 0.5)
                                                                                        for d in (0, 1)}
    for r in imb:
        assert (r["n_train"], r["n_train_pos"], r["n_test"]) == (33, int(np.ceil(r["pos_fraction"] * 33)), 20)
    assert len(noise) == 2 * 2 * 4 and all((r["n_flipped"], r["n_train"]) == (12, 60) for r in noise)
    # the dense probe on 1_animals' noisy labels, draw 1: refitted here
    ds = data.load_dataset("1_animals", folder)
    tr, te = data.split_indices(ds.y_N, max_examples=80, test_fraction=0.25, seed=1)
    idx = np.concatenate([tr, te])
    tok = acts.pooled_rows(None, HOOK, ds.name, ds.texts, idx, poolings=("last",), cache_dir=out / "activations",
                           model_name="tiny-llama", max_tokens=cfg.max_tokens, batch_tokens=cfg.batch_tokens)["last"]
    x_ND = acts.pool(tok.rows_TD, tok.offsets, "last")
    y_noisy = Split(idx, len(tr), ds.y_N[idx]).noisy_labels(0.2, seed=1, draw=1)
    want = fit_probe(x_ND[:60], y_noisy[:60], x_ND[60:], ds.y_N[idx][60:], probe_cfg, seed=1)
    got = next(r for r in noise if (r["dataset"], r["sae"], r["draw"]) == ("1_animals", "dense probe", 1))
    assert got["C"] == want.c and got["n_train_pos"] == int(y_noisy[:60].sum())
    assert (got["auc"], got["accuracy"]) == pytest.approx((want.auc, want.accuracy), abs=1e-9)
    # the report averages a dataset's draws first: one dense value per fraction
    m = report.setting_means(res, "imbalance_rows")[("dense probe", HOOK, "last", "dense")]
    by_ds = [np.mean([r["auc"] for r in imb if (r["dataset"], r["sae"], r["pos_fraction"]) == (n, "dense probe", 0.1)])
             for n in ("1_animals", "2_letters")]
    assert m[0.1]["auc"] == pytest.approx(np.mean(by_ds)) and m[0.1]["n"] == 2 and "full" in m
    md = (out / "results.md").read_text()
    assert "## Class imbalance" in md and "## Label noise" in md and "2 seeded draws per value" in md
    assert "| autoencoder | probe | 0.1 | 0.5 | full (60) |" in md and "| autoencoder | probe | full (60) | 0.2 |" in md and "Training texts per dataset: 33." in md
    assert (out / "auc_vs_pos_fraction.png").stat().st_size > 0 and (out / "auc_vs_label_noise.png").stat().st_size > 0
    before = _mtimes(out / "results")
    again = run_probing(saes, cfg, out, probe_cfg=probe_cfg)
    assert (again["imbalance_rows"], again["noise_rows"]) == (imb, noise) and _mtimes(out / "results") == before


def test_a_fraction_that_leaves_a_class_below_the_folds_is_skipped(tmp_path):
    from saelens_lite.evals.probing.splits import Split, variants

    split = Split(np.arange(120), 100, np.array([1, 0] * 60))
    cfg = ProbingConfig(pos_fractions=[0.02, 0.1], label_noise=[0.5], train_sizes=[10, 100], draws=3)
    v = variants(cfg, split, min_class=3)
    assert [x.fields for x in v["imbalance_rows"]] == [{"pos_fraction": 0.1, "draw": d} for d in range(3)]
    # the size is the one every listed fraction allows, the skipped one too: min(50 / 0.02, 50 / 0.98) = 51,
    # where 0.02 has ceil(1.02) = 2 positive texts, fewer than the 3 folds
    assert [x.n_train for x in v["imbalance_rows"]] == [51] * 3
    assert [x.fields["train_size"] for x in v["scarce_rows"]] == [10] * 3  # 100 is the whole split
    assert [x.fields["n_flipped"] for x in v["noise_rows"]] == [50] * 3


def _ood(folder, n=30):
    """An OOD set for 1_animals (other words, targets as strings) in its own folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    _write(folder / "1_animals_OOD.csv", [(f"a {rng.choice(['cow', 'pig'])} ran off", "1") for _ in range(n)]
           + [(f"count {rng.choice(['ten', 'six'])}", "0") for _ in range(n)])
    _write(folder / "9_other_OOD.csv", [("x", 0), ("y", 1)])  # no such dataset here: never read
    return folder


def test_ood_labels_by_the_files_own_sorted_values(tmp_path):
    folder = _ood(tmp_path / "ood")
    _write(folder / "2_letters_OOD.csv", [("ab", "zz"), ("cd", "aa"), ("ef", "zz")])
    assert sorted(data.ood_datasets(folder)) == ["1_animals", "2_letters", "9_other"]
    o = data.load_ood("2_letters", folder)
    assert o.name == "2_letters_OOD" and o.classes == ("aa", "zz") and o.y_N.tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="'3_x' has no 3_x_OOD file"):
        data.load_ood("3_x", folder)


def test_ood_rows_score_the_training_split_probes_on_the_ood_texts(tmp_path):
    folder, ood_dir = _datasets(tmp_path / "d"), _ood(tmp_path / "ood")
    saes = [_sae(tmp_path / "topk")]
    cfg = ProbingConfig(model="tiny-llama", data_dir=str(folder), ood_dir=str(ood_dir), min_per_class=40, ks=[1, 2],
                        pooling="last", max_examples=80, seed=1, ood=True)
    probe_cfg = ProbeConfig(cs=[0.1, 1.0], folds=2)
    out = tmp_path / "out"
    res = run_probing(saes, cfg, out, probe_cfg=probe_cfg)
    ood = res["ood_rows"]
    assert {r["dataset"] for r in ood} == {"1_animals"} and len(ood) == 1 + 3  # dense; k=1, k=2, all
    assert all((r["test_set"], r["n_train"], r["n_test"], r["n_test_pos"], r["ood_classes"]) == ("ood", 60, 60, 30, ["0", "1"])
               for r in ood)
    # the oracle: the dense probe refitted here on the training split's rows, scored on the OOD rows
    ds, o = data.load_dataset("1_animals", folder), data.load_ood("1_animals", ood_dir)
    tr, te = data.split_indices(ds.y_N, max_examples=80, test_fraction=0.25, seed=1)
    kw = dict(poolings=("last",), cache_dir=out / "activations", model_name="tiny-llama", max_tokens=cfg.max_tokens,
              batch_tokens=cfg.batch_tokens)
    tok = acts.pooled_rows(None, HOOK, ds.name, ds.texts, np.concatenate([tr, te]), **kw)["last"]
    tok_o = acts.pooled_rows(None, HOOK, o.name, o.texts, np.arange(60), **kw)["last"]
    x_tr = acts.pool(tok.rows_TD, tok.offsets, "last")[: len(tr)]
    want = fit_probe(x_tr, ds.y_N[tr], acts.pool(tok_o.rows_TD, tok_o.offsets, "last"), o.y_N, probe_cfg, seed=1)
    got = next(r for r in ood if r["sae"] == "dense probe")
    assert got["C"] == want.c  # the same fit in this process; AUC and accuracy to float tolerance
    assert (got["auc"], got["accuracy"]) == pytest.approx((want.auc, want.accuracy), abs=1e-9)
    assert "## Out of distribution" in (out / "results.md").read_text()
    before = _mtimes(out)
    assert run_probing(saes, cfg, out, probe_cfg=probe_cfg)["ood_rows"] == ood
    assert {p: t for p, t in _mtimes(out).items() if "results" in p.parts} == \
        {p: t for p, t in before.items() if "results" in p.parts}


def test_an_edited_dataset_file_is_harvested_and_probed_again(tmp_path):
    folder = _datasets(tmp_path / "d")
    saes = [_sae(tmp_path / "topk")]
    cfg = ProbingConfig(model="tiny-llama", data_dir=str(folder), datasets=["2_letters"], ks=[1], pooling="last",
                        max_examples=60, seed=0, all_latents=False)
    probe_cfg = ProbeConfig(cs=[1.0])
    out = tmp_path / "out"
    run_probing(saes, cfg, out, probe_cfg=probe_cfg)
    entries = sorted((out / "activations").rglob("*.json"))
    results = sorted((out / "results").rglob("*.json"))
    df = pd.read_csv(folder / "2_letters.csv")
    df.loc[:, "prompt"] = df["prompt"].str.replace("zz", "zy")  # same rows and labels, other texts
    df.to_csv(folder / "2_letters.csv", index=False)
    run_probing(saes, cfg, out, probe_cfg=probe_cfg)
    assert len(sorted((out / "activations").rglob("*.json"))) == len(entries) + 1  # harvested again
    assert len(sorted((out / "results").rglob("*.json"))) == 2 * len(results)  # probed again


def test_cli_runs_end_to_end(tmp_path, capsys):
    folder = _datasets(tmp_path / "d")
    out = tmp_path / "out"
    assert main(["bench", "probing", "--model", "tiny-llama", "--sae", _sae(tmp_path / "sae"), "--out", str(out),
                 "--data-dir", str(folder), "--datasets", "2_letters", "--k", "1", "4", "--max-examples", "60",
                 "--pooling", "last", "--seed", "2"]) == 0
    printed = capsys.readouterr().out
    assert "dense probe" in printed and "k=4" in printed and "wrote results.md" in printed
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["dataset"] for r in rows} == {"2_letters"} and {r["pooling"] for r in rows} == {"last"}
    assert {r["probe"] for r in rows} == {"dense", "k=1", "k=4", "all"}


@pytest.mark.parametrize("case, needle", [
    ("unknown dataset", "'9_nope'"),
    ("not binary", "'3_numeric' is not binary"),
    ("width", "d_in=32"),
    ("k", "--k 200"),
    ("train size", "--train-sizes 4: below 6"),
    ("fraction", "pos_fractions=[0.5, 1.0]"),
    ("noise", "label_noise=[0.6]"),
    ("draws", "draws=0"),
    ("ood", "none of the datasets has an OOD test set"),
])
def test_cli_bad_input_gives_one_line_and_writes_nothing(tmp_path, capsys, case, needle):
    folder = _datasets(tmp_path / "d")
    out = tmp_path / "out"
    sae = _sae(tmp_path / "sae", d_in=32 if case == "width" else 64)
    argv = ["bench", "probing", "--model", "tiny-llama", "--sae", sae, "--out", str(out),
            "--data-dir", str(folder), "--min-per-class", "40"]
    argv += {"unknown dataset": ["--datasets", "1_animals", "9_nope"], "not binary": ["--datasets", "3_numeric"],
             "width": [], "k": ["--k", "1", "200"], "train size": ["--train-sizes", "16", "4"],
             "fraction": ["--pos-fractions", "0.5", "1"], "noise": ["--label-noise", "0.6"], "draws": ["--draws", "0"],
             "ood": ["--datasets", "2_letters", "--ood", "--ood-dir", str(_ood(tmp_path / "ood"))]}[case]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["sparsify", "saelens"])
def test_a_peer_format_sae_probes_as_our_own_does(tmp_path, fmt):
    """The peers' TopK SAEs go through the same pipeline: our SAE exported to sparsify's or
    SAELens's format gets the same scores as the SAE itself (same latents, same probes)."""
    from saelens_lite.saes import SAE
    from saelens_lite.saes.interop import export

    folder = _datasets(tmp_path / "d")
    ours = _sae(tmp_path / "ours")
    peer = tmp_path / fmt
    export(SAE.load(ours), peer, to=fmt)
    cfg = ProbingConfig(model="tiny-llama", data_dir=str(folder), datasets=["1_animals"], ks=[1, 2],
                        pooling="last", max_examples=80, seed=1, hook=HOOK)
    res = run_probing([ours, str(peer)], cfg, tmp_path / "out", probe_cfg=ProbeConfig(cs=[1.0], folds=2))
    by_label: dict = {}
    for r in res["rows"]:
        if r["probe"] != "dense":
            by_label.setdefault((r["sae"], r["pooling"]), {})[r["probe"]] = r["auc"]
    assert len(by_label) == 2, by_label
    mine, theirs = by_label.values()
    assert mine.keys() == theirs.keys() == {"k=1", "k=2", "all"}
    for probe in mine:
        assert theirs[probe] == pytest.approx(mine[probe], abs=1e-6), probe
