"""The hierarchical toy model keeps its promises (children only with their parent, one at a
time) and the absorption score is exact on hand-built SAEs: 1 for one that silences the parent
latent whenever a child fires, 0 for a faithful one."""

import pytest
import torch

from saelens_lite.evals.hierarchy import (
    HierarchicalData,
    HierarchyConfig,
    absorption_rates,
    parent_latents,
)
from saelens_lite.evals.synthetic import format_table, run_benchmark
from saelens_lite.saes import SAE, SAEConfig

P, C = 4, 3
G = P * (1 + C)


def orthogonal_data(**kw) -> HierarchicalData:
    """Orthogonal true directions (D = G), so a ReLU SAE with W_enc = W_true^T reads each
    coefficient exactly."""
    data = HierarchyConfig(d=G, n_parents=P, children=C, parent_rate=0.3, child_rate=0.6, **kw).build()
    q, _ = torch.linalg.qr(torch.randn(G, G, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    data.W_true_GD = q.float()
    return data


def relu_sae(W_enc_DF: torch.Tensor, W_dec_FD: torch.Tensor) -> SAE:
    sae = SAE.from_config(SAEConfig.build(architecture="relu", d_in=G, d_sae=G))
    with torch.no_grad():
        sae.W_enc.copy_(W_enc_DF)
        sae.W_dec.copy_(W_dec_FD)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_children_fire_only_with_their_parent_and_one_at_a_time():
    data = HierarchyConfig(d=32, n_parents=P, children=C, parent_rate=0.3, child_rate=0.6).build()
    x, c = data.sample(50_000, seed=2)
    on = c != 0
    parent, child_NPC = on[:, :P], on[:, P:].view(-1, P, C)
    assert not (child_NPC.any(-1) & ~parent).any()
    assert child_NPC.sum(-1).max() == 1
    assert parent.double().mean().item() == pytest.approx(0.3, abs=0.01)
    assert child_NPC.any(-1)[parent].double().mean().item() == pytest.approx(0.6, abs=0.01)
    assert child_NPC[parent].double().mean().item() == pytest.approx(0.6 / C, abs=0.01)
    torch.testing.assert_close(x, c @ data.W_true_GD)
    assert data.cfg.n_features == G and data.cfg.mean_active == pytest.approx(P * 0.3 * 1.6)


def test_a_faithful_sae_absorbs_nothing():
    data = orthogonal_data()
    sae = relu_sae(data.W_true_GD.T, data.W_true_GD)
    x, c = data.sample(5_000)
    s = data.extra_scores(sae, x, c)
    assert s == {"absorption": 0.0, "absorption_control": 0.0, "parents_recovered": 1.0,
                 "children_recovered": 1.0}


def test_a_parent_latent_silenced_by_its_children_is_fully_absorbed():
    data = orthogonal_data(magnitude_spread=0.0)  # every coefficient 1
    W_enc_DF = data.W_true_GD.T.clone()
    for p in range(P):  # parent latent reads c_p - 2 sum_children c: -1 with a child, 1 alone
        kids = data.W_true_GD[P + p * C:P + (p + 1) * C]
        W_enc_DF[:, p] -= 2 * kids.sum(0)
    sae = relu_sae(W_enc_DF, data.W_true_GD)
    x, c = data.sample(5_000)
    s = data.extra_scores(sae, x, c)
    assert s["absorption"] == 1.0 and s["absorption_control"] == 0.0
    assert (parent_latents(data.W_true_GD[:P], sae.W_dec) == torch.arange(P)).all()


def test_absorption_rates_count_pairs_pooled_over_parents():
    parent = torch.tensor([[1, 1], [1, 0], [1, 1], [0, 1]], dtype=torch.bool)
    child = torch.tensor([[1, 0], [0, 0], [1, 1], [0, 1]], dtype=torch.bool)
    fired = torch.tensor([[0, 1], [1, 0], [1, 0], [0, 1]], dtype=torch.bool)
    # with a child: (0,0) silent, (2,0) fired, (2,1) silent, (3,1) fired -> 2/4; alone: (0,1), (1,0) fired
    assert absorption_rates(fired, parent, child) == (0.5, 0.0)


def test_bad_hierarchy_config_names_the_field():
    with pytest.raises(ValueError, match="HierarchyConfig.child_rate=1.5"):
        HierarchyConfig(child_rate=1.5)


def test_benchmark_rows_carry_the_absorption_columns():
    cfg = HierarchyConfig(d=16, n_parents=3, children=2, parent_rate=0.3, child_rate=0.5)
    rows = run_benchmark(["topk"], cfg=cfg, n_train=2_000, n_eval=1_000,
                         train_options={"tokens": 4096 * 2, "batch_size": 512})
    assert {"absorption", "absorption_control", "parents_recovered", "children_recovered"} <= set(rows[0])
    table = format_table(rows, cfg.build().columns)
    assert "absorption_control" in table.splitlines()[0] and "topk" in table


def test_cli_bench_hierarchical_prints_absorption(tmp_path, capsys):
    import json

    from saelens_lite.cli import main

    code = main(["bench", "synthetic", "--setting", "hierarchical", "--arch", "matryoshka", "--d", "16",
                 "--parents", "3", "--children", "2", "--latents", "24", "--k", "2", "--n-train", "2000",
                 "--train-tokens", "8192", "--eval-tokens", "1000", "--json", str(tmp_path / "r.json")])
    assert code == 0
    assert "absorption" in capsys.readouterr().out.splitlines()[0]
    row = json.loads((tmp_path / "r.json").read_text())["rows"][0]
    assert row["architecture"] == "matryoshka" and 0 <= row["absorption"] <= 1
