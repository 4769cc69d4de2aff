"""``saelens-lite eval`` writes JSON + markdown + PNG; ``bench synthetic`` prints a table."""

import json

import pytest

from saelens_lite.cli import main


def test_cli_eval_writes_json_and_markdown(tmp_path, capsys):
    from saelens_lite.harvesting import HarvestConfig, harvest
    from saelens_lite.saes import SAE, SAEConfig

    hook = "blocks.1.hook_resid_post"
    harvest(HarvestConfig(model="tiny-gpt2", hooks=[hook], tokens=300, context_size=24, device="cpu"),
            tmp_path / "c", progress=False)
    SAE.from_config(SAEConfig(architecture="topk", d_in=64, d_sae=128, k=4, hook_name=hook)).save(tmp_path / "sae")
    assert main(["eval", "--sae", str(tmp_path / "sae"), "--activations", str(tmp_path / "c"),
                 "--out", str(tmp_path / "ev"), "--ce-contexts", "2", "--no-progress"]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["l0"] == pytest.approx(4.0) and m["model"] == "tiny-gpt2"
    assert m["ce_loss_clean"] is not None and m["kl_div"] >= 0
    assert (tmp_path / "ev" / "summary.md").read_text().startswith("SAE topk")
    assert (tmp_path / "ev" / "feature_density.png").exists()
    assert "CE loss recovered" in capsys.readouterr().out


def test_cli_bench_synthetic_prints_table(capsys, tmp_path):
    assert main(["bench", "synthetic", "--arch", "topk", "--d", "16", "--features", "32", "--mean-active", "2",
                 "--n-train", "5000", "--train-tokens", "20480", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "| architecture | mmcs |" in out and "| topk |" in out
    assert json.loads((tmp_path / "b.json").read_text())["rows"][0]["architecture"] == "topk"
