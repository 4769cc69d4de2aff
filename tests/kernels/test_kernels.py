"""Fast sparse kernels equal their dense float64 references, values and every gradient."""

import pytest
import torch

from saelens_lite import kernels
from saelens_lite.kernels import SparsePattern

B, D, F, K = 7, 5, 13, 3
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(seed=0, device="cpu", col_major=False):
    g = torch.Generator().manual_seed(seed)

    def mk(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(device).requires_grad_()

    W_enc = (
        mk(F, D).detach().T.requires_grad_() if col_major else mk(D, F)
    )  # SAE stores W_enc column-major
    return mk(B, D), W_enc, mk(F), mk(D), mk(F, D)


def _patterns(device="cpu"):
    idx_BK = torch.stack(
        [torch.randperm(F, generator=torch.Generator().manual_seed(i))[:K] for i in range(B)]
    )
    # ragged rows (including an empty row), as BatchTopK produces
    rows = torch.tensor([0, 0, 0, 0, 2, 3, 3, 5, 5, 5, 6], device=device)
    cols = torch.tensor([1, 4, 7, 12, 0, 4, 9, 2, 3, 11, 4], device=device)
    return {"topk": idx_BK.to(device), "ragged": SparsePattern.from_coo(rows, cols, B, F)}


def _grads(out, params, seed=1):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)
    return torch.autograd.grad((out * w).sum(), params)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["topk", "ragged"])
def test_sparse_decode_matches_reference_values_and_grads(kind, device):
    idx = _patterns(device)[kind]
    *_, W_dec = _inputs(device=device)
    n = idx.numel() if isinstance(idx, torch.Tensor) else idx.cols_N.numel()
    vals = torch.randn(n, dtype=torch.float64, device=device).requires_grad_()
    if isinstance(idx, torch.Tensor):
        vals = vals.detach().view(B, K).requires_grad_()
    fast = kernels.sparse_decode(idx, vals, W_dec)
    ref = kernels.sparse_decode_reference(idx, vals, W_dec)
    torch.testing.assert_close(fast, ref)
    for a, b in zip(_grads(fast, (vals, W_dec)), _grads(ref, (vals, W_dec))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("col_major", [False, True])
@pytest.mark.parametrize("kind", ["topk", "ragged"])
@pytest.mark.parametrize("give_pre", [False, True])
def test_select_preacts_matches_reference_values_and_grads(kind, give_pre, col_major, device):
    idx = _patterns(device)[kind]
    x, W_enc, b_enc, b_dec, _ = _inputs(device=device, col_major=col_major)
    ref = kernels.select_preacts_reference(x, W_enc, b_enc, b_dec, idx)
    pre = ref.detach() if give_pre else None
    fast = kernels.select_preacts(x, W_enc, b_enc, b_dec, idx, pre)
    torch.testing.assert_close(fast, ref)
    params = (x, W_enc, b_enc, b_dec)
    for a, b in zip(_grads(fast, params), _grads(ref, params)):
        torch.testing.assert_close(a, b)


def test_topk_encode_matches_dense_topk():
    x, W_enc, b_enc, b_dec, _ = _inputs()
    vals, idx = kernels.topk_encode(x, W_enc, b_enc, b_dec, K)
    pre = kernels.dense_preacts(x, W_enc, b_enc, b_dec)
    ref_vals, ref_idx = pre.topk(K, dim=-1)
    torch.testing.assert_close(vals.sort(-1).values, torch.relu(ref_vals).sort(-1).values)
    assert torch.equal(idx.sort(-1).values, ref_idx.sort(-1).values)
    params = (W_enc, b_enc, b_dec)
    fast_g = torch.autograd.grad(kernels.sparse_decode(idx, vals, W_enc.T).pow(2).sum(), params)
    dense = torch.zeros_like(pre).scatter(-1, ref_idx, torch.relu(ref_vals))
    ref_g = torch.autograd.grad((dense @ W_enc.T).pow(2).sum(), params)
    for a, b in zip(fast_g, ref_g):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [None, torch.float32])
def test_topk_select_chunked_matches_dense_topk_with_aux(dtype, device):
    x, W_enc, b_enc, b_dec, _ = (t.detach() for t in _inputs(device=device))
    dead = torch.zeros(F, dtype=torch.bool, device=device)
    dead[::2] = True
    sel = kernels.topk_select(
        x,
        W_enc,
        b_enc,
        b_dec,
        K,
        dead_mask_F=dead,
        k_aux=2,
        compute_dtype=dtype,
        chunk_rows=3,
        sorted=True,
    )
    pre = kernels.dense_preacts(x, W_enc, b_enc, b_dec)
    ref_vals, ref_idx = pre.topk(K, dim=-1)
    torch.testing.assert_close(sel.pre_BK, ref_vals)
    assert torch.equal(sel.idx_BK, ref_idx)
    aux_vals, aux_idx = pre.masked_fill(~dead, -float("inf")).topk(2, dim=-1)
    torch.testing.assert_close(sel.aux_pre_BK.sort(-1).values, aux_vals.sort(-1).values)
    assert torch.equal(sel.aux_idx_BK.sort(-1).values, aux_idx.sort(-1).values)


# Half-precision results against float32 on the same (rounded) inputs: the error is a few
# roundings of the largest value, so the bound is N_EPS * eps(dtype) * max|reference| per
# tensor. Measured on seeds 0-4: at most 1.2 eps * max (bf16 and fp16 alike; seed 0, the one
# tested, 1.0), so 2 eps leaves a margin while a 5% error (6 eps in bf16, 51 in fp16) fails.
HALF_N_EPS = 2.0


def _assert_close_in_eps(actual, expected, dtype):
    atol = HALF_N_EPS * torch.finfo(dtype).eps * expected.abs().max().item()
    torch.testing.assert_close(actual.float(), expected, rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_dtypes_use_the_fallback_and_match_float32(dtype):
    idx = _patterns()["ragged"]
    x, W_enc, b_enc, b_dec, W_dec = (t.detach().to(dtype).requires_grad_() for t in _inputs())
    vals = kernels.select_preacts(x, W_enc, b_enc, b_dec, idx)
    out = kernels.sparse_decode(idx, vals, W_dec)
    params = (x, W_enc, b_enc, b_dec, W_dec)
    grads = _grads(out, params)
    p32 = [t.detach().float().requires_grad_() for t in params]
    ref = kernels.sparse_decode_reference(
        idx, kernels.select_preacts_reference(*p32[:4], idx), p32[4]
    )
    _assert_close_in_eps(out, ref, dtype)
    for a, b in zip(grads, _grads(ref, p32)):
        _assert_close_in_eps(a, b, dtype)


@pytest.mark.parametrize("kind", ["topk", "ragged", "sentinel"])
def test_transposed_matmul_on_cpu_equals_the_dense_product(kind):
    """A^T @ dense for A (B, F) holding vals at the pattern, against the dense float64 product:
    plain, as the (D, F) transpose (out_DF) and as a pair. With the sentinel column F (the
    Triton path's marker for an inactive entry) those entries take no part; features with no
    entry give zero rows."""
    g = torch.Generator().manual_seed(3)
    if kind == "sentinel":
        idx = _patterns()["topk"].clone()
        idx[::2, 0] = F  # half the rows: one entry inactive
        p = SparsePattern.from_topk(idx, F)
    else:
        p = _patterns()[kind]
        p = p if isinstance(p, SparsePattern) else SparsePattern.from_topk(p, F)
    n = p.cols_N.numel()
    v1, v2 = (torch.randn(n, generator=g, dtype=torch.float64) for _ in range(2))
    d1, d2 = (torch.randn(B, D, generator=g, dtype=torch.float64) for _ in range(2))

    def dense_A(v):
        A = torch.zeros(B, F + 1, dtype=torch.float64)
        A.index_put_((p.rows_N, p.cols_N), v, accumulate=True)
        return A[:, :F]  # the sentinel column dropped

    want1, want2 = dense_A(v1).T @ d1, dense_A(v2).T @ d2
    assert (want1.abs().sum(1) == 0).any()  # some feature has no entry
    torch.testing.assert_close(p.transposed_matmul(v1, d1), want1)
    out_DF = p.transposed_matmul(v1, d1, out_DF=True)
    assert out_DF.shape == (D, F) and out_DF.is_contiguous()
    torch.testing.assert_close(out_DF, want1.T)
    got1, got2 = p.transposed_matmul_pair(v1, d1, v2, d2)
    torch.testing.assert_close(got1, want1)
    torch.testing.assert_close(got2, want2)
    torch.testing.assert_close(p.transposed_matmul(v1.float(), d1.float(), out_dtype=torch.float64), want1,
                               rtol=1e-5, atol=1e-5)

