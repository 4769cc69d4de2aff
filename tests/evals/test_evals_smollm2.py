"""On the real SmolLM2 a briefly trained SAE lands between the clean and the zero-ablated model."""

import pytest


@pytest.mark.slow
def test_briefly_trained_sae_is_between_clean_and_zero_ablation(tmp_path, smollm2):
    from saelens_lite.cache.harvest import HarvestConfig, harvest
    from saelens_lite.evals import EvalConfig, evaluate, format_summary
    from saelens_lite.saes import TopKConfig
    from saelens_lite.training import TrainConfig, train

    hook = "blocks.9.hook_resid_post"
    cache = harvest(HarvestConfig(model="smollm2-135m", hooks=[hook], tokens=4096, context_size=128, device="cpu"),
                    tmp_path / "c", model=smollm2, progress=False)
    sae = train(TrainConfig(sae=TopKConfig(k=32), hooks=[hook], expansion=4, tokens=8 * 4096,
                            batch_size=1024, warmup_steps=10, checkpoint_every=0, progress=False,
                            out_dir=str(tmp_path / "run")), cache)
    m = evaluate(sae, cache, EvalConfig(ce_contexts=4, progress=False, out_dir=tmp_path / "ev"),
                  model=smollm2)
    print(format_summary(m))
    assert m["ce_loss_clean"] < m["ce_loss_sae"] < m["ce_loss_zero"]
    assert 0 < m["ce_loss_recovered"] < 1 and m["kl_div"] > 0
    assert m["fvu"] < 1 and m["l0"] == pytest.approx(32, abs=0.5)
