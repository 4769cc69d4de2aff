"""Pruned fused top-k: fewer candidates per tile than K, exact after the saturated rows' repair.

The selection logic is checked on keys built in PyTorch (any candidate set that holds each
tile's KT largest keys); the Triton kernel that builds them runs in the interpreter on a CPU.
Oracle: `torch.topk` over all keys (keys are distinct, so the top K is unique).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first `import triton`

pytest.importorskip("triton", reason="triton is not installed")  # a Linux x86-64 dependency only

from saelens_lite.kernels import triton_topk as tt  # noqa: E402  (after TRITON_INTERPRET)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
INT_MIN = -(2**31)


def _keys(B: int, F: int, seed: int) -> torch.Tensor:
    """Distinct int32 keys (B, F) as the kernel packs them: a bf16 value over the column."""
    g = torch.Generator().manual_seed(seed)
    vals = torch.randn(B, F, generator=g).to(torch.bfloat16)
    return tt.pack_keys(vals, torch.arange(F).expand(B, F))


def _candidates(keys_BF: torch.Tensor, block_f: int, kt: int) -> torch.Tensor:
    """Each tile's kt largest keys, (B, T*kt); padding columns hold INT_MIN as in the kernel."""
    B, F = keys_BF.shape
    T = -(-F // block_f)
    padded = torch.full((B, T * block_f), INT_MIN, dtype=torch.int32)
    padded[:, :F] = keys_BF
    return padded.view(B, T, block_f).topk(kt, dim=-1).values.reshape(B, T * kt)


def _exact(keys_BF: torch.Tensor, k: int):
    return lambda rows_R: keys_BF[rows_R].topk(k, dim=-1).values


def _rowsets(keys_BK: torch.Tensor) -> list[set]:
    return [set(r) for r in keys_BK.tolist()]


@pytest.mark.parametrize("B, F, block_f, k, kt", [(512, 1024, 128, 32, 8),  # 8 tiles: ~1/4 rows saturate
                                                  (300, 1000, 64, 24, 4),  # partial last tile
                                                  (64, 4096, 256, 64, 16)])  # fmt: skip
def test_pruned_selection_with_full_repair_is_the_exact_topk(B, F, block_f, k, kt):
    keys = _keys(B, F, seed=B)
    cand = _candidates(keys, block_f, kt)
    sel = tt.select_pruned(cand, kt, k, _exact(keys, k), capacity=B)
    assert _rowsets(sel.keys_BK) == _rowsets(keys.topk(k, dim=-1).values)
    assert sel.unrepaired.item() == 0
    if B == 512:  # this case exercises the repair: without it some rows are wrong
        plain = cand.topk(k, dim=-1).values
        wrong = torch.tensor(
            [a != b for a, b in zip(_rowsets(plain), _rowsets(keys.topk(k).values))]
        )
        assert wrong.sum() > 10
        assert (sel.saturated_B | ~wrong).all()  # every wrong row was detected as saturated


def test_only_saturated_rows_can_be_wrong_and_overflow_is_counted():
    B, F, block_f, k, kt, cap = 512, 1024, 128, 32, 8, 5
    keys = _keys(B, F, seed=1)
    cand = _candidates(keys, block_f, kt)
    sel = tt.select_pruned(cand, kt, k, _exact(keys, k), capacity=cap)
    exact = _rowsets(keys.topk(k, dim=-1).values)
    got = _rowsets(sel.keys_BK)
    ok = torch.tensor([a == b for a, b in zip(got, exact)])
    n_sat = int(sel.saturated_B.sum())
    assert n_sat > cap and sel.unrepaired.item() == n_sat - cap
    assert ok[~sel.saturated_B].all()  # unsaturated rows: exact without repair
    assert (~ok).sum() <= n_sat - cap  # only saturated rows past the capacity can be wrong
    assert (~ok).sum() > 0  # ... and here some are


def test_a_row_whose_top_k_sits_in_one_tile_is_repaired():
    B, F, block_f, k, kt = 4, 512, 128, 16, 8
    keys = _keys(B, F, seed=2)
    vals = torch.full((B, F), -1.0).to(torch.bfloat16)
    vals[1, 130:146] = torch.arange(16, dtype=torch.float32).to(torch.bfloat16) + 1  # tile 1
    keys = torch.where(
        torch.arange(B)[:, None] == 1, tt.pack_keys(vals, torch.arange(F).expand(B, F)), keys
    )
    sel = tt.select_pruned(_candidates(keys, block_f, kt), kt, k, _exact(keys, k), capacity=1)
    assert sel.saturated_B[1] and sel.unrepaired.item() == int(sel.saturated_B.sum()) - 1
    _, cols = tt.unpack_keys(sel.keys_BK[1], torch.bfloat16)
    assert sorted(cols.tolist()) == list(range(130, 146))


def test_pruned_kt_trades_candidates_against_expected_saturated_rows():
    # issue 7's shapes: 8 of 32 per 256-wide tile (96 tiles), 16 of 64 (64 tiles)
    assert tt.pruned_kt(16384, 24576, 32, 256) == 8
    assert tt.pruned_kt(8192, 16384, 64, 256) == 16
    # BatchTopK's 2k = 128 candidates: beyond the unpruned kernel's k <= 64
    assert tt.pruned_kt(8192, 16384, 128, 256) < 64
    # few tiles: a row's top k crowds each tile, so no pruning pays
    assert tt.pruned_kt(4096, 256, 32, 256) == 32
    # the rule: expected saturated rows <= capacity / 64 under random placement
    B, F, k, bf = 16384, 24576, 32, 256
    kt = tt.pruned_kt(B, F, k, bf)
    T, p = F // bf, bf / F
    from math import comb

    def expected(kt_):
        return B * T * sum(comb(k, j) * p**j * (1 - p) ** (k - j) for j in range(kt_, k + 1))

    assert expected(kt) <= tt.PRUNED_CAPACITY / 64 < expected(kt // 2)


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("F_, k, blocks, kt", [(200, 12, (16, 32, 16), 4),  # partial last tile
                                               (512, 12, (16, 64, 16), 4)])  # fmt: skip
def test_fused_pruned_encode_equals_the_unpruned_fused_kernel(F_, k, blocks, kt):
    B, D = 24, 16
    g = torch.Generator().manual_seed(F_)
    xc = torch.randn(B, D, generator=g).to(DEV, torch.bfloat16)
    W = (torch.randn(F_, D, generator=g) * 0.3).to(DEV, torch.bfloat16).T
    b = (torch.randn(F_, generator=g) * 0.1).to(DEV, torch.bfloat16)
    vals, idx, unrepaired = tt.encode_topk_pruned(xc, W, b, k, blocks, kt=kt, capacity=B)
    ref_vals, ref_idx = tt.encode_topk(xc, W, b, k, blocks)
    assert unrepaired.item() == 0 and vals.shape == idx.shape == (B, k)
    if DEV == "cpu":  # the interpreter and the CPU matmul round alike (see test_triton_kernels)
        assert _rowsets(tt.pack_keys(vals, idx)) == _rowsets(tt.pack_keys(ref_vals, ref_idx))
    cand = tt.tile_candidates(xc, W, b, k, blocks, kt=kt)
    assert cand.shape == (B, -(-F_ // blocks[1]) * kt)
    rows = tt.select_pruned(cand, kt, k, lambda r: cand[r][:, :k], capacity=0).saturated_B
    assert 0 < rows.sum() < B  # both kinds of rows occur here


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_fast_step_with_pruned_selection_takes_the_fused_step(arch, monkeypatch):
    """The CUDA path's arithmetic through the interpreter: with every saturated row repaired,
    select="pruned" gives the selection, loss and gradients of select="fused" exactly."""
    from saelens_lite.kernels import sparse as sparse_mod
    from saelens_lite.saes import SAE, SAEConfig
    from saelens_lite.training import fast_step

    monkeypatch.setenv(fast_step.FORCE_LOWP_ENV, "1")
    monkeypatch.setenv(sparse_mod.FORCE_TRITON_ENV, "1")
    monkeypatch.setattr(tt, "pruned_kt", lambda *a, **kw: 4)  # prune hard: 4 of k = 8 / 16
    monkeypatch.setattr(tt, "PRUNED_CAPACITY", 32)  # = B: every saturated row is repaired
    monkeypatch.setattr(tt, "BLOCKS", (32, 64, 16))  # 4 tiles of F = 256
    torch.manual_seed(0)
    sae = SAE.from_config(SAEConfig.build(architecture=arch, d_in=16, d_sae=256, k=8)).to(DEV)
    x = torch.randn(32, 16, device=DEV)
    runs = {m: fast_step.sparse_loss_and_grads(sae, x, compute_dtype=torch.bfloat16, select=m)
            for m in ("fused", "pruned")}  # fmt: skip
    fused, pruned = runs["fused"], runs["pruned"]
    assert pruned.out.inexact_rows.item() == 0 and fused.out.inexact_rows is None
    assert _rowsets(pruned.idx_BK) == _rowsets(fused.idx_BK)
    assert torch.equal(pruned.out.loss, fused.out.loss)
    for name, g in fused.grads.items():  # the pattern's order may differ: sums up to rounding
        torch.testing.assert_close(pruned.grads[name], g, rtol=1e-6, atol=1e-7)
    monkeypatch.setattr(tt, "PRUNED_CAPACITY", 0)  # nothing repaired: the saturated rows count
    bare = fast_step.sparse_loss_and_grads(sae, x, compute_dtype=torch.bfloat16, select="pruned")
    assert bare.out.inexact_rows.item() > 0


def test_pruned_select_names_why_it_cannot_run(monkeypatch):
    from saelens_lite.saes import SAE, SAEConfig
    from saelens_lite.training import fast_step

    monkeypatch.setenv(fast_step.FORCE_LOWP_ENV, "1")
    sae = SAE.from_config(SAEConfig.build(architecture="topk", d_in=12, d_sae=64, k=4, dtype="float64"))
    with pytest.raises(ValueError, match="select='pruned' needs.*per tile"):
        fast_step.sparse_loss_and_grads(sae, torch.randn(9, 12, dtype=torch.float64),
                                        compute_dtype=torch.float32, select="pruned")  # fmt: skip


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("capacity", [0, 32])
def test_trainer_reports_rows_the_pruned_selection_could_not_repair(capacity, monkeypatch, caplog,
                                                                    tmp_path):  # fmt: skip
    """train() with topk_select="pruned" (the CUDA arithmetic on a CPU, interpreted): rows
    past the repair capacity are summed over the run and reported once at the end."""
    import logging

    from saelens_lite.kernels import sparse as sparse_mod
    from saelens_lite.saes import TopKConfig
    from saelens_lite.training import TrainConfig, fast_step, train

    monkeypatch.setenv(fast_step.FORCE_LOWP_ENV, "1")
    monkeypatch.setenv(sparse_mod.FORCE_TRITON_ENV, "1")
    monkeypatch.setattr(tt, "pruned_kt", lambda *a, **kw: 4)
    monkeypatch.setattr(tt, "PRUNED_CAPACITY", capacity)
    monkeypatch.setattr(tt, "BLOCKS", (32, 64, 16))
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(sae=TopKConfig(d_sae=256, k=8), batch_size=32, tokens=96,
                      fast_step="on", topk_select="pruned", dtype="bfloat16", device="cpu",
                      out_dir=str(tmp_path / "run"), progress=False, checkpoint_every=0)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="saelens_lite.training.trainer"):
        train(cfg, x)
    warned = [r.getMessage() for r in caplog.records if "topk_select='pruned'" in r.getMessage()]
    if capacity:  # every saturated row repaired: exact, nothing to report
        assert not warned
    else:
        assert len(warned) == 1 and int(warned[0].split()[1]) > 0, warned
