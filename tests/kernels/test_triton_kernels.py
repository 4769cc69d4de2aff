"""Triton sparse kernels and the fast training step equal float64 references.

Without CUDA the Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1, set before
triton is imported); without triton those tests skip. The fast-step oracle tests need neither.
"""

import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first `import triton`

from helpers import make_sae  # noqa: E402

from saelens_lite import kernels  # noqa: E402
from saelens_lite.kernels import SparsePattern  # noqa: E402
from saelens_lite.kernels import sparse as sparse_mod  # noqa: E402
from saelens_lite.saes import SAE, SAEConfig  # noqa: E402
from saelens_lite.training import fast_select, fast_step  # noqa: E402
from saelens_lite.training.fast_step import FastTrainStep, sparse_loss_and_grads  # noqa: E402

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
interpreted = pytest.mark.triton_interpreter  # kernels run in Triton's interpreter on a CPU
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
B, D, F, K = 9, 6, 17, 3
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=5e-2),
}


def _ts():
    from saelens_lite.kernels import triton_sparse

    return triton_sparse


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _topk_idx(seed=0):
    return torch.stack(
        [torch.randperm(F, generator=torch.Generator().manual_seed(seed + i))[:K] for i in range(B)]
    )


def _ragged():
    """Ragged rows: an empty row, a feature used 6 times (several blocks of the segment loop at
    block_n=4), features used by nobody."""
    rows = torch.tensor([0, 0, 0, 1, 1, 3, 3, 4, 5, 5, 6, 7, 8, 8])
    cols = torch.tensor([2, 5, 9, 5, 16, 0, 5, 5, 1, 5, 5, 11, 2, 3])
    return rows, cols


def _dense(rows, cols, vals, n_rows=B):
    return torch.zeros(n_rows, F, dtype=vals.dtype).index_put((rows, cols), vals, accumulate=True)


@interpreted
@needs_triton
@pytest.mark.parametrize("dtype", list(TOL))
def test_decode_topk_equals_dense_reference(dtype):
    idx, vals, W = _topk_idx(), _rand(B, K), _rand(F, D, seed=1)
    out = _ts().decode_topk(idx.to(DEV), vals.to(DEV, dtype), W.to(DEV, dtype))
    ref = _dense(torch.arange(B).repeat_interleave(K), idx.view(-1), vals.view(-1)) @ W
    torch.testing.assert_close(out.cpu().double(), ref, **TOL[dtype])


@interpreted
@needs_triton
def test_decode_topk_mixed_dtypes_accumulates_in_float32():
    idx, vals, W = _topk_idx(), _rand(B, K), _rand(F, D, seed=1)
    out = _ts().decode_topk(idx.to(DEV), vals.float().to(DEV), W.to(DEV, torch.bfloat16))
    assert out.dtype == torch.float32
    ref = _dense(torch.arange(B).repeat_interleave(K), idx.view(-1), vals.view(-1)) @ W
    torch.testing.assert_close(out.cpu().double(), ref, **TOL[torch.bfloat16])


@interpreted
@needs_triton
@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("kind", ["topk", "ragged"])
def test_sampled_dot_equals_reference(kind, dtype):
    rows, cols = (
        (torch.arange(B).repeat_interleave(K), _topk_idx().view(-1))
        if kind == "topk"
        else _ragged()
    )
    L, R = _rand(B, D), _rand(F, D, seed=1)
    out = _ts().sampled_dot(rows.to(DEV), cols.to(DEV), L.to(DEV, dtype), R.to(DEV, dtype))
    torch.testing.assert_close(out.cpu().double(), (L[rows] * R[cols]).sum(-1), **TOL[dtype])


@interpreted
@needs_triton
@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("out_DF", [False, True])
@pytest.mark.parametrize("n_pairs", [1, 2])
@pytest.mark.parametrize(
    "launch",
    [dict(block_n=4), dict(block_n=4, prefetch=True), dict(block_n=2, block_d=4, prefetch=True)],
    ids=["plain", "prefetch", "prefetch-two-slices"],
)
def test_transposed_matmul_equals_reference(n_pairs, out_DF, dtype, launch):
    """Segments of 0 to 6 entries over loops of block_n (the prefetching loop reads the next
    block's indices ahead, masked past the segment's end); block_d < D splits D in slices."""
    rows, cols = _ragged()
    order, crow = sparse_mod._sync_free_csr(cols.to(DEV), F)
    pairs = [(_rand(len(rows), seed=2 + i), _rand(B, D, seed=5 + i)) for i in range(n_pairs)]
    outs = _ts().transposed_matmul(
        crow,
        order,
        rows.to(DEV)[order],
        [(v.to(DEV, dtype), x.to(DEV, dtype)) for v, x in pairs],
        out_DF=out_DF,
        **launch,
    )
    for out, (v, x) in zip(outs, pairs):
        ref = _dense(rows, cols, v).T @ x
        assert out.is_contiguous()
        torch.testing.assert_close(out.cpu().double(), ref.T if out_DF else ref, **TOL[dtype])


@pytest.fixture
def triton_dispatch(monkeypatch):
    """Route the SparsePattern primitives to Triton on this device (CPU: the interpreter)."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    monkeypatch.setenv(sparse_mod.FORCE_TRITON_ENV, "1")


@interpreted
@pytest.mark.parametrize("kind", ["topk", "ragged"])
def test_sparse_autograd_functions_through_triton_match_reference(kind, triton_dispatch):
    rows, cols = _ragged()
    idx = _topk_idx().to(DEV) if kind == "topk" else SparsePattern.from_coo(rows, cols, B, F)
    if kind == "ragged" and DEV != "cpu":
        idx = SparsePattern.from_coo(rows.to(DEV), cols.to(DEV), B, F)
    x, b_dec = (_rand(B, D, seed=1).to(DEV), _rand(D, seed=2).to(DEV))
    W_enc = _rand(F, D, seed=3).to(DEV).T  # column-major, as the SAE stores it
    b_enc, W_dec = _rand(F, seed=4).to(DEV), _rand(F, D, seed=5).to(DEV)
    params = [t.requires_grad_() for t in (x, W_enc, b_enc, b_dec, W_dec)]
    fast = kernels.sparse_decode(idx, kernels.select_preacts(*params[:4], idx), W_dec)
    ref = kernels.sparse_decode_reference(
        idx, kernels.select_preacts_reference(*params[:4], idx), W_dec
    )
    torch.testing.assert_close(fast, ref)
    w = _rand(*ref.shape, seed=9).to(DEV)
    for a, b in zip(
        torch.autograd.grad((fast * w).sum(), params), torch.autograd.grad((ref * w).sum(), params)
    ):
        torch.testing.assert_close(a, b)


def _sae(dtype="float64", device="cpu", seed=0, d=12, f=40, k=4, arch="topk"):
    return make_sae(arch, seed=seed, bias_std=1.0, w_enc_noise=0.1, device=device,
                    d_in=d, d_sae=f, k=k, dtype=dtype, aux_k=6)


@pytest.mark.parametrize("backward", ["sparse", "dense"])
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
@pytest.mark.parametrize("dead", ["none", "few", "many"])
def test_fast_step_grads_equal_autograd_through_training_forward(dead, arch, backward):
    if arch == "matryoshka" and backward == "dense":
        pytest.skip("matryoshka's fast step is sparse only (fast_step_dense_backward)")
    sae, ref = _sae(arch=arch), _sae(arch=arch)
    x = _rand(9, 12, seed=7)
    dead_mask = None if dead == "none" else torch.zeros(40, dtype=torch.bool)
    if dead == "few":
        dead_mask[:3] = True  # fewer dead latents than aux_k: the fixed-k_aux masking matters
    elif dead == "many":
        dead_mask[::2] = True
    res = sparse_loss_and_grads(sae, x, dead_mask_F=dead_mask, backward=backward)
    out = ref.training_forward(x, dead_mask_F=dead_mask)
    out.loss.backward()
    if arch != "topk":  # (here no row keeps all 2k candidates: the model keeps m = 2k)
        torch.testing.assert_close(sae.threshold, ref.threshold)
    torch.testing.assert_close(res.out.loss, out.loss.detach())
    torch.testing.assert_close(res.out.fvu, out.fvu)
    torch.testing.assert_close(res.out.l0, out.l0)
    assert torch.equal(res.out.fired_F, out.fired_F)
    for name, q in ref.named_parameters():
        torch.testing.assert_close(res.grads[name], q.grad, msg=name)
        assert res.grads[name].stride() == q.stride(), name


@interpreted
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_fast_step_through_triton_kernels_equals_autograd(arch, triton_dispatch):
    sae, ref = _sae(device=DEV, arch=arch), _sae(device=DEV, arch=arch)
    x = _rand(9, 12, seed=7).to(DEV)
    res = sparse_loss_and_grads(sae, x)
    ref.training_forward(x).loss.backward()
    for name, q in ref.named_parameters():
        torch.testing.assert_close(res.grads[name], q.grad, msg=name)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_fast_train_step_takes_the_same_step_as_the_autograd_loop(arch):
    a, b = _sae(arch=arch), _sae(arch=arch)
    oa = torch.optim.Adam(a.parameters(), lr=1e-2)
    ob = torch.optim.Adam(b.parameters(), lr=1e-2)
    step = FastTrainStep(b, ob)
    for i in range(3):
        x = _rand(9, 12, seed=20 + i)
        out = a.training_forward(x)
        oa.zero_grad()
        out.loss.backward()
        a.before_optimizer_step_()
        oa.step()
        a.after_optimizer_step_()
        torch.testing.assert_close(step(x).loss, out.loss.detach())
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, msg=name)


def test_dense_backward_takes_the_sparse_step_and_is_validated():
    """backward="dense" (four GEMMs over the code matrix) against the sparse kernels' step,
    three optimiser steps, float64."""
    a, b = _sae(), _sae()
    sa = FastTrainStep(a, torch.optim.Adam(a.parameters(), lr=1e-2))
    sb = FastTrainStep(b, torch.optim.Adam(b.parameters(), lr=1e-2), backward="dense")
    dead = torch.zeros(40, dtype=torch.bool)
    dead[::4] = True
    for i in range(3):
        x = _rand(9, 12, seed=30 + i)
        torch.testing.assert_close(sb(x, dead).loss, sa(x, dead).loss)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, msg=name)
    with pytest.raises(ValueError, match="backward='gemm'.*'sparse', 'dense'"):
        FastTrainStep(a, torch.optim.Adam(a.parameters()), backward="gemm")
    with pytest.raises(ValueError, match="backward='gemm'"):
        sparse_loss_and_grads(a, _rand(9, 12), backward="gemm")


def test_fast_step_rejects_unsupported_configs():
    sae = SAE.from_config(SAEConfig.build(architecture="topk", d_in=8, d_sae=16, k=2, multi_topk=True))
    with pytest.raises(ValueError, match="multi_topk"):
        sparse_loss_and_grads(sae, torch.randn(4, 8))
    with pytest.raises(ValueError, match="relu"):
        sparse_loss_and_grads(SAE.from_config(SAEConfig.build(architecture="relu", d_in=768, d_sae=1536)), torch.randn(4, 768))


@interpreted
@pytest.mark.parametrize("backward", ["sparse", "dense"])
@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_bf16_fast_step_is_within_bf16_error_of_float64_reference(
    arch, backward, triton_dispatch, monkeypatch
):
    """The CUDA path's arithmetic (fused bf16 matmul + top-k, bf16 gathered rows or bf16 dense
    GEMMs, fp32 accumulation); on a CPU through the Triton interpreter."""
    monkeypatch.setenv(fast_step.FORCE_LOWP_ENV, "1")
    calls, fused = [], _tt().encode_topk
    monkeypatch.setattr(_tt(), "encode_topk", lambda *a: calls.append(1) or fused(*a))
    shape = dict(d=32, f=64, k=4)
    sae = _sae(dtype="float32", device=DEV, arch=arch, **shape)
    x = _rand(32, 32, seed=3).float().to(DEV)
    res = sparse_loss_and_grads(sae, x, compute_dtype=torch.bfloat16, backward=backward)
    assert calls, "the selection should have gone through the fused kernel"
    ref = _sae(dtype="float64", arch=arch, **shape)
    ref.load_state_dict({k: v.double().cpu() for k, v in sae.state_dict().items()})
    xr = x.double().cpu()
    idx = res.idx_BK.cpu()  # the same candidates (bf16 may break near-ties differently)
    pre = kernels.dense_preacts(xr, ref.W_enc, ref.b_enc, ref.b_dec).gather(-1, idx)
    if arch == "batchtopk":  # the same batch top-(B*k) among them
        pre = pre * res.keep_N.cpu().view_as(pre)
    acts = torch.zeros(len(xr), 64, dtype=torch.float64).scatter(-1, idx, torch.relu(pre))
    loss = (acts @ ref.W_dec + ref.b_dec - xr).pow(2).sum(-1).mean()
    loss.backward()
    assert abs(res.out.loss.item() - loss.item()) / loss.item() < 1e-2
    for name, q in ref.named_parameters():
        g = res.grads[name].double().cpu()
        assert (g - q.grad).norm() / q.grad.norm() < 2e-2, name
    dead = torch.zeros(64, dtype=torch.bool, device=DEV)
    dead[::3] = True
    aux = sparse_loss_and_grads(sae, x, dead_mask_F=dead, compute_dtype=torch.bfloat16,
                                backward=backward)  # fmt: skip
    assert all(bool(g.isfinite().all()) for g in aux.grads.values())
    assert aux.out.loss > res.out.loss


@needs_cuda
@needs_triton
def test_cuda_graph_step_equals_eager_step():
    a, b = _sae("float32", "cuda", d=64, f=512, k=8), _sae("float32", "cuda", d=64, f=512, k=8)
    sa = FastTrainStep(a, torch.optim.Adam(a.parameters(), lr=1e-3, fused=True), cuda_graph=False)
    sb = FastTrainStep(b, torch.optim.Adam(b.parameters(), lr=1e-3, fused=True), cuda_graph=True)
    for i in range(5):  # 2 warm-up, 1 capture, 2 replays
        x = _rand(256, 64, seed=40 + i).float().cuda()
        torch.testing.assert_close(sb(x).loss, sa(x).loss, rtol=1e-3, atol=1e-6)
    # atomics (index_add_) may flip Adam's sign(g) where g ~ 0: compare by relative norm
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p - q).norm() <= 1e-3 * p.norm() + 1e-6, name


def _tt():
    from saelens_lite.kernels import triton_topk

    return triton_topk


def test_packed_keys_sort_like_their_floats_and_unpack_exactly():
    vals = torch.cat([_rand(500, seed=11) * 10.0 ** _rand(500, seed=12).clamp(-3, 3),
                      torch.tensor([0.0, -0.0, 3.0, 3.0, float("inf"), -float("inf")])])
    vals = vals.to(torch.bfloat16)  # ties: 3.0 twice, bf16 rounding collides more  # fmt: skip
    cols = torch.randperm(len(vals), generator=torch.Generator().manual_seed(0))
    keys = _tt().pack_keys(vals, cols)
    # integer order = float order with -0 < +0, ties broken by the larger column
    f = vals.tolist()
    order = sorted(range(len(f)), key=lambda i: (f[i], math.copysign(1.0, f[i]), int(cols[i])))
    assert keys.argsort().tolist() == order
    v, c = _tt().unpack_keys(keys, torch.bfloat16)
    assert torch.equal(v.view(torch.int16), vals.view(torch.int16))  # bit-exact, -0 included
    assert torch.equal(c, cols)
    with pytest.raises(ValueError, match="bfloat16"):
        _tt().pack_keys(vals.float(), cols)


@interpreted
@needs_triton
@pytest.mark.parametrize(
    "B, D, F_, k, blocks",
    [(19, 24, 200, 5, (16, 64, 16)),  # 4 tiles (the last partial), k not a power of 2
     (5, 16, 64, 8, None),  # default blocks clipped to the problem, one tile
     (33, 40, 130, 16, (16, 32, 16))],  # KT = BLOCK_F / 2, partial row and D blocks
)  # fmt: skip
def test_fused_encode_topk_is_the_exact_topk_of_the_bf16_preacts(B, D, F_, k, blocks):
    tt = _tt()
    g = torch.Generator().manual_seed(B)
    xc = torch.randn(B, D, generator=g).to(DEV, torch.bfloat16)
    W = (torch.randn(F_, D, generator=g) * 0.3).to(DEV, torch.bfloat16).T  # (D, F) col-major
    b = (torch.randn(F_, generator=g) * 0.1).to(DEV, torch.bfloat16)
    vals, idx = tt.encode_topk(xc, W, b, k, blocks)
    assert vals.shape == idx.shape == (B, k) and vals.dtype == torch.bfloat16
    pre = (xc.double() @ W.double() + b.double()).to(torch.bfloat16)  # exact products, rounded
    assert all(len(set(r)) == k for r in idx.tolist())  # distinct columns
    ref_vals, _ = tt.encode_topk_reference(xc, W, b, k)
    if DEV == "cpu":  # the interpreter sums in order: bit-exact
        # the returned values are the pre-activations at the returned columns, and they are
        # the k largest (as multisets: ties may pick other columns)
        assert torch.equal(pre.gather(1, idx), vals)
        assert torch.equal(vals.float().sort(-1).values, ref_vals.float().sort(-1).values)
    else:  # tensor cores sum in another order: a value may round one bf16 ulp apart
        ulp = vals.float().abs() * 2**-7 + 1e-6
        assert ((pre.gather(1, idx).float() - vals.float()).abs() <= ulp).all()
        diff = (vals.float().sort(-1).values - ref_vals.float().sort(-1).values).abs()
        assert (diff <= ulp.sort(-1).values.max(-1, keepdim=True).values).all()


@needs_triton
def test_fused_encode_topk_refuses_what_it_cannot_pack():
    tt = _tt()
    x = torch.zeros(4, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="bfloat16"):
        tt.tile_candidates(x.float(), torch.zeros(16, 64), torch.zeros(64), 4)
    with pytest.raises(ValueError, match="BLOCK_F"):
        tt.tile_candidates(x, torch.zeros(16, 64, dtype=torch.bfloat16),
                           torch.zeros(64, dtype=torch.bfloat16), 64, (16, 32, 16))  # fmt: skip
    assert tt.supports(torch.bfloat16, 1 << 16, 64)
    assert not tt.supports(torch.bfloat16, (1 << 16) + 1, 32)
    assert not tt.supports(torch.float32, 1024, 32)
    assert not tt.supports(torch.bfloat16, 1024, 65)


def test_fast_step_select_mode_is_validated():
    sae = _sae(dtype="float32")
    with pytest.raises(ValueError, match="'bogus'.*allowed"):
        FastTrainStep(sae, torch.optim.Adam(sae.parameters()), select="bogus")


def test_fused_select_names_why_it_cannot_run(monkeypatch):
    monkeypatch.setenv(fast_step.FORCE_LOWP_ENV, "1")
    sae = _sae(dtype="float64")  # float32 compute: not servable by the fused kernel
    with pytest.raises(ValueError, match="select='fused' needs"):
        sparse_loss_and_grads(sae, _rand(9, 12), compute_dtype=torch.float32, select="fused")


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_bounded_aux_selection_equals_the_full_one_when_few_latents_are_dead(arch, monkeypatch):
    """n_dead <= M: every dead latent is a candidate, so the bounded AuxK selection is the
    full masked one (float32 'low precision' on a float64 model keeps the check tight)."""
    monkeypatch.setenv(fast_step.FORCE_LOWP_ENV, "1")
    sae = _sae(dtype="float64", arch=arch, f=40)
    x, dead = _rand(9, 12, seed=7), torch.zeros(40, dtype=torch.bool)
    dead[[1, 5, 6, 20, 33, 39]] = True  # 6 dead <= M = 8 (aux_k = 6)
    kw = dict(dead_mask_F=dead, compute_dtype=torch.float32)
    full = sparse_loss_and_grads(sae, x, aux_candidates=40, **kw)
    bounded = sparse_loss_and_grads(sae, x, aux_candidates=8, **kw)
    assert full.out.auxk > 0
    torch.testing.assert_close(bounded.out.loss, full.out.loss)
    for name in full.grads:
        torch.testing.assert_close(bounded.grads[name], full.grads[name], msg=name)


def test_bounded_aux_selection_is_autograd_auxk_over_the_drawn_dead_subset(monkeypatch):
    """n_dead > M: AuxK runs over M dead latents drawn uniformly at random; replaying the draw,
    it equals the model's own AuxK (float64 autograd) with the dead mask cut to that subset."""
    monkeypatch.setenv(fast_step.FORCE_LOWP_ENV, "1")
    sae, ref = _sae(dtype="float64"), _sae(dtype="float64")
    x, dead = _rand(9, 12, seed=7), torch.zeros(40, dtype=torch.bool)
    dead[::2] = True  # 20 dead > M = 12
    subsets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        res = sparse_loss_and_grads(
            sae, x, dead_mask_F=dead, compute_dtype=torch.float32, aux_candidates=12
        )
        torch.manual_seed(seed)
        drawn = torch.zeros(40, dtype=torch.bool)
        drawn[(torch.rand(40) + 2 * dead).topk(12).indices] = True
        assert not (drawn & ~dead).any()
        subsets.append(drawn)
        ref.zero_grad()
        out = ref.training_forward(x, dead_mask_F=drawn)
        out.loss.backward()
        torch.testing.assert_close(res.out.loss, out.loss.detach(), rtol=1e-5, atol=1e-7)
        for name, q in ref.named_parameters():
            torch.testing.assert_close(res.grads[name], q.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.equal(*subsets)  # a fresh draw each step


@interpreted
def test_auto_select_falls_back_for_good_when_the_fused_kernel_fails(monkeypatch, caplog):
    """A kernel that fails to compile on some GPU must not stop training under "auto"."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    monkeypatch.setenv(fast_step.FORCE_LOWP_ENV, "1")
    monkeypatch.setenv(sparse_mod.FORCE_TRITON_ENV, "1")
    monkeypatch.setattr(fast_select, "FUSED_FAILED", [])
    calls = []

    def broken(*a):
        calls.append(1)
        raise RuntimeError("out of resources: shared memory")

    monkeypatch.setattr(_tt(), "encode_topk", broken)
    sae, x = _sae(dtype="float32", d=32, f=64), _rand(16, 32, seed=3).float()
    kw = dict(compute_dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="out of resources"):
        sparse_loss_and_grads(sae, x, select="fused", **kw)
    ref = sparse_loss_and_grads(sae, x, select="torch", **kw)
    for _ in range(2):
        res = sparse_loss_and_grads(sae, x, **kw)
        assert torch.equal(res.idx_BK, ref.idx_BK) and torch.equal(res.out.loss, ref.out.loss)
    assert len(calls) == 2  # tried once under "auto", then never again
    assert "fused top-k kernel failed" in caplog.text


@interpreted
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
@pytest.mark.parametrize("dead", ["few", "many"])
def test_sentinel_patterns_through_triton_equal_autograd_with_auxk(arch, dead, triton_dispatch,
                                                                   monkeypatch):  # fmt: skip
    """The Triton path routes inactive entries (BatchTopK's dropped candidates, AuxK's non-dead
    picks) to the sentinel column F; float32 'low precision' rows on a float64 model keep the
    comparison with the model's float64 autograd (AuxK included) tight."""
    monkeypatch.setenv(fast_step.FORCE_LOWP_ENV, "1")
    sae, ref = _sae(device=DEV, arch=arch), _sae(arch=arch)
    x, dead_F = _rand(9, 12, seed=7), torch.zeros(40, dtype=torch.bool)
    if dead == "few":
        dead_F[:3] = True  # fewer dead than aux_k: most aux picks are inactive
    else:
        dead_F[::2] = True
    res = sparse_loss_and_grads(sae, x.to(DEV), dead_mask_F=dead_F.to(DEV),
                                compute_dtype=torch.float32, aux_candidates=40)  # fmt: skip
    out = ref.training_forward(x, dead_mask_F=dead_F)
    out.loss.backward()
    torch.testing.assert_close(res.out.loss.cpu(), out.loss.detach(), rtol=1e-5, atol=1e-7)
    assert torch.equal(res.out.fired_F.cpu(), out.fired_F)
    for name, q in ref.named_parameters():
        torch.testing.assert_close(res.grads[name].cpu(), q.grad, rtol=1e-4, atol=1e-6, msg=name)


@interpreted
@needs_triton
def test_triton_kernels_skip_sentinel_entries():
    """Entries whose column is F contribute nothing and load nothing (an out-of-range row)."""
    ts = _ts()
    idx = _topk_idx().to(DEV)
    vals, table = _rand(B, K, seed=1).to(DEV), _rand(F, D, seed=2).to(DEV)
    off = torch.zeros(B, K, dtype=torch.bool)
    off[::2, 0] = True
    off[3, :] = True  # a row with nothing active
    off = off.to(DEV)
    sent = torch.where(off, F, idx)
    ref = ts.decode_topk(idx, torch.where(off, 0.0, vals), table)
    torch.testing.assert_close(ts.decode_topk(sent, vals, table), ref)
    rows = torch.arange(B, device=DEV).repeat_interleave(K)
    left = _rand(B, D, seed=3).to(DEV)
    dots = ts.sampled_dot(rows, sent.reshape(-1), left, table)
    want = (left[rows] * table[idx.reshape(-1)]).sum(-1) * ~off.reshape(-1)
    torch.testing.assert_close(dots, want)
