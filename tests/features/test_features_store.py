"""Saving and loading a features folder: every array and note comes back exactly, a folder
without its manifest is incomplete, and other formats or old sites fail with the fix."""

import json

import numpy as np
import pytest

from saelens_lite.features.logits import LogitEffects, Neighbours
from saelens_lite.features.stats import FeatureStats, StatsConfig
from saelens_lite.features.store import (
    MANIFEST,
    features_dir,
    load_features,
    read_manifest,
    save_features,
)

F, T, Q, S, H, L, N = 11, 4, 3, 2, 5, 6, 3


def random_stats(seed: int = 0) -> FeatureStats:
    rng = np.random.default_rng(seed)
    ints = lambda *shape: rng.integers(-1, 1000, shape)  # noqa: E731
    floats = lambda *shape: rng.random(shape).astype(np.float32)  # noqa: E731
    return FeatureStats(1234, ints(F), rng.random(F), floats(F), ints(F, H), floats(F, T), ints(F, T),
                        ints(F, Q), floats(F, Q, S), ints(F, Q, S), hook="blocks.0.hook_resid_post")


def assert_same_stats(a: FeatureStats, b: FeatureStats) -> None:
    assert (a.n_tokens, a.hook) == (b.n_tokens, b.hook)
    for name in ("count_F", "sum_F", "max_F", "hist_FH", "top_vals_FT", "top_rows_FT", "quant_counts_FQ",
                 "quant_vals_FQS", "quant_rows_FQS"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_round_trip_is_exact(tmp_path, mmap):
    rng = np.random.default_rng(1)
    stats = random_stats()
    logits = LogitEffects(rng.random((F, L), np.float32), rng.integers(0, 50, (F, L)),
                          rng.random((F, L), np.float32), rng.integers(0, 50, (F, L)))
    near = Neighbours(rng.random((F, N), np.float32), rng.integers(0, F, (F, N)))
    save_features(tmp_path / "f", stats, logits=logits, neighbours=near, config=StatsConfig(n_top=T),
                  meta={"model": "m"})
    got = load_features(tmp_path / "f", mmap=mmap)
    assert_same_stats(got.stats, stats)
    for want, have in ((logits, got.logits), (near, got.neighbours)):
        assert type(have) is type(want)
        for x, y in zip(want, have):
            np.testing.assert_array_equal(x, y)
    assert got.meta["model"] == "m" and got.meta["config"]["n_top"] == T


def test_a_note_instead_of_logits_and_no_neighbours(tmp_path):
    save_features(tmp_path, random_stats(), logits="no LM head")
    got = load_features(tmp_path)
    assert got.logits == "no LM head" and got.neighbours is None and got.meta["config"] is None


def test_a_site_folder_finds_its_features_subfolder(tmp_path):
    save_features(tmp_path / "site" / "features", random_stats())
    assert features_dir(tmp_path / "site") == tmp_path / "site" / "features"
    assert load_features(tmp_path / "site").stats.n_tokens == 1234


def test_without_the_manifest_the_folder_is_incomplete(tmp_path):
    save_features(tmp_path, random_stats())
    (tmp_path / MANIFEST).unlink()  # what a crash before the last write leaves
    with pytest.raises(FileNotFoundError, match="no saved feature statistics"):
        load_features(tmp_path)


def test_saving_again_replaces_the_arrays(tmp_path):
    save_features(tmp_path, random_stats(0))
    save_features(tmp_path, random_stats(1))
    assert_same_stats(load_features(tmp_path).stats, random_stats(1))


def test_other_formats_and_wrong_shapes_are_refused(tmp_path):
    save_features(tmp_path, random_stats())
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    (tmp_path / MANIFEST).write_text(json.dumps({**manifest, "n_features": F + 1}))
    with pytest.raises(ValueError, match=f"says {F + 1} features"):
        load_features(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({**manifest, "format": 7}))
    with pytest.raises(ValueError, match="features format 7.*saelens-lite dashboard"):
        read_manifest(tmp_path)


def test_an_old_site_names_the_rebuild(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.js").write_text("saeMeta({});\n")
    with pytest.raises(FileNotFoundError, match="built before.*saelens-lite dashboard --sae"):
        features_dir(tmp_path)
