"""The code table and the segmented top-n: lookups against a dense matrix, top-n merged over
chunks against a global argsort, and bottom-k sampling's uniformity."""

import numpy as np
import pytest

from saelens_lite.features.table import CodeTable, merge_topn, segment_topn


def test_lookup_reads_back_a_dense_matrix(tmp_path):
    rng = np.random.default_rng(0)
    A_NF = rng.random((30, 7)).astype(np.float32) * (rng.random((30, 7)) < 0.3)
    table = CodeTable(tmp_path, 7)
    rows_E, feats_E = np.nonzero(A_NF)  # row-major: the keys ascend
    for a in range(0, len(rows_E), 5):
        table.append(rows_E[a:a + 5] * 7 + feats_E[a:a + 5], A_NF[rows_E[a:a + 5], feats_E[a:a + 5]])
    table.close()
    r_X, f_X = np.meshgrid(np.arange(30), np.arange(7), indexing="ij")
    np.testing.assert_array_equal(table.lookup(r_X, f_X), A_NF)
    table.delete()
    assert not tmp_path.exists()


def test_an_empty_table_looks_up_zeros(tmp_path):
    table = CodeTable(tmp_path, 3)
    table.close()
    assert (table.lookup(np.array([0, 5]), np.array([1, 2])) == 0).all()


def test_quantile_sampling_reaches_every_member():
    """Bottom-k on random keys is uniform: over many draws each member is picked as often."""
    n_seg, n = 3, 2
    seg = np.array([0, 0, 0, 0, 1, 1, 2])
    picks = np.zeros(len(seg))
    rng = np.random.default_rng(0)
    for _ in range(400):
        _, p = segment_topn(seg, rng.random(len(seg), dtype=np.float32), np.arange(len(seg)), n_seg, n)
        picks[p[p >= 0]] += 1
    assert (picks[:4] / 400 > 0.35).all() and (picks[:4] / 400 < 0.65).all()  # 2 of 4: p = 0.5
    assert (picks[4:] == 400).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # the one-sort and the two-sort paths
def test_segment_topn_merged_over_chunks_equals_global_topn(dtype):
    rng = np.random.default_rng(1)
    seg = rng.integers(0, 50, 5000)
    score = rng.random(5000).astype(dtype)
    pay = np.arange(5000)
    best_s = np.full((50, 4), -np.inf, dtype)
    best_p = np.full((50, 4), -1)
    for a in range(0, 5000, 700):
        s, p = segment_topn(seg[a:a + 700], score[a:a + 700], pay[a:a + 700], 50, 4)
        best_s, best_p = merge_topn(best_s, best_p, s, p, 4)
    for k in range(50):
        idx = np.flatnonzero(seg == k)
        want = idx[np.argsort(-score[idx])[:4]]
        assert best_p[k].tolist() == want.tolist()
        np.testing.assert_array_equal(best_s[k], score[want])
