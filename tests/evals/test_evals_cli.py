"""``saelens-lite eval`` writes JSON + markdown + PNG; ``bench synthetic`` prints a table."""

import json

import pytest

from saelens_lite.cli import main


def test_cli_eval_writes_json_and_markdown(tmp_path, capsys):
    from saelens_lite.cache.harvest import HarvestConfig, harvest
    from saelens_lite.saes import SAE, SAEConfig

    hook = "blocks.1.hook_resid_post"
    harvest(HarvestConfig(model="tiny-gpt2", hooks=[hook], tokens=300, context_size=24, device="cpu"),
            tmp_path / "c", progress=False)
    SAE.from_config(SAEConfig.build(architecture="topk", d_in=64, d_sae=128, k=4, hook_name=hook)).save(tmp_path / "sae")
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


def test_cli_bench_synthetic_passes_per_architecture_options(monkeypatch, capsys):
    import saelens_lite.training as training

    seen, real = {}, training.train
    monkeypatch.setattr(training, "train", lambda cfg, data: seen.setdefault(cfg.sae.architecture, cfg)
                        and real(cfg, data))  # fmt: skip
    args = ["bench", "synthetic", "--arch", "topk", "relu", "--d", "16", "--features", "32",
            "--mean-active", "2", "--n-train", "5000", "--train-tokens", "8192"]  # fmt: skip
    assert main([*args, "--option", "relu.l1_coeff=0.5", "--option", "relu.b_dec_init=mean"]) == 0
    assert (seen["relu"].sae.l1_coeff, seen["relu"].sae.b_dec_init) == (0.5, "mean")
    assert seen["topk"].sae.b_dec_init == "geometric_median"  # only the named architecture gets them
    assert "| relu |" in capsys.readouterr().out
    seen.clear()
    assert main([*args, "--option", "jumprelu.l0_coeff=3"]) != 0  # refused before training
    assert not seen
    err = capsys.readouterr().err
    assert "sae_options for ['jumprelu'], which this run does not train" in err
    assert "['topk', 'relu']" in err
    assert main([*args, "--option", "l1_coeff=3"]) != 0
    assert "expected ARCH.KEY=VALUE" in capsys.readouterr().err
