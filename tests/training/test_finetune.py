"""End-to-end fine-tuning (``training.finetune``) on tiny-llama: the KL and CE terms equal a
float64 reference, the first step's KL is the evaluation's spliced-model KL, a KL fine-tune
lowers the held-out CE gap of a poorly trained SAE and of a transcoder, the model stays frozen,
a run resumed after a crash ends with the weights of an uninterrupted one, and bad values fail
naming the field, the value and the choices."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saelens_lite.evals.downstream import downstream_metrics
from saelens_lite.evals.heldout import heldout_contexts
from saelens_lite.saes import SAE
from saelens_lite.training import TrainConfig, train
from saelens_lite.training.checkpoint import list_checkpoints
from saelens_lite.training.finetune import FinetuneConfig, downstream_losses, finetune

pytestmark = pytest.mark.usefixtures("one_thread")

HOOK = "blocks.1.hook_resid_post"
S = 64
FT_CONTEXTS = 100  # fine-tuned on contexts [0, 100); evaluated on contexts after them


def train_poor(out, **kw) -> str:
    """An SAE (or transcoder, with target_hook) trained on 4,096 streamed tokens: far from
    converged, so splicing it costs CE."""
    base = dict(hooks=[HOOK], model="tiny-llama", expansion=4, k=4, tokens=4096, batch_size=512,
                context_size=S, out_dir=str(out), progress=False, device="cpu")
    base.update(kw)
    train(TrainConfig.from_dict(base))
    return str(out / base["hooks"][0])


@pytest.fixture(scope="module")
def lm():
    from saelens_lite.lm.load import load_model

    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory, lm) -> str:
    return train_poor(tmp_path_factory.mktemp("sae"))


def ft_config(tmp_path, sae: str, **kw) -> FinetuneConfig:
    base = dict(sae=sae, loss="kl", tokens=S * 8 * 30, context_size=S, batch_contexts=8, contexts=FT_CONTEXTS,
                lr=1e-3, out_dir=str(tmp_path / "ft"), progress=False, log_every=1, checkpoint_every=0)
    base.update(kw)
    return FinetuneConfig(**base)


def heldout(lm, n: int = 16) -> list[np.ndarray]:
    return heldout_contexts(lm.tokenizer, "builtin:pydocs", S, n, skip=FT_CONTEXTS).contexts


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --- the loss ----------------------------------------------------------------------------------
def test_kl_and_ce_equal_a_float64_reference():
    g = torch.Generator().manual_seed(0)
    B, T, V = 3, 7, 11
    clean, new = torch.randn(B, T, V, generator=g) * 3, torch.randn(B, T, V, generator=g) * 3
    ids = torch.randint(0, V, (B, T), generator=g)
    keep = torch.rand(B, T, generator=g) > 0.3
    got = downstream_losses(clean, new, ids, keep)
    p, q = np.exp(clean.double().numpy()), np.exp(new.double().numpy())
    p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
    kl = [(p[b, t] * np.log(p[b, t] / q[b, t])).sum() for b in range(B) for t in range(T) if keep[b, t]]
    ce = [-np.log(q[b, t, ids[b, t + 1]]) for b in range(B) for t in range(T - 1) if keep[b, t]]
    assert float(got["kl"]) == pytest.approx(np.mean(kl), rel=1e-5)
    assert float(got["ce"]) == pytest.approx(np.mean(ce), rel=1e-5)


def test_the_first_steps_kl_is_the_evaluations_spliced_kl(tmp_path, lm, sae_dir):
    """Unfolding the saved SAE to training units and splicing it through training_forward
    gives the function the evaluation splices (before any update)."""
    finetune(ft_config(tmp_path, sae_dir, tokens=S * 8), lm=lm)
    first = metrics(tmp_path / "ft")[0]
    contexts = heldout_contexts(lm.tokenizer, "builtin:pydocs", S, 8).contexts
    ref = downstream_metrics(SAE.load(sae_dir), lm, HOOK, contexts, progress=False)
    assert first["kl"] == pytest.approx(ref["kl_div"], rel=1e-3)
    assert first["ce"] == pytest.approx(ref["ce_loss_sae"], rel=1e-4)


# --- what fine-tuning does ---------------------------------------------------------------------
def test_a_kl_finetune_lowers_the_heldout_ce_gap_and_leaves_the_model_unchanged(tmp_path, lm, sae_dir):
    model_before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    flags = [p.requires_grad for p in lm.model.parameters()]
    contexts = heldout(lm)
    before = downstream_metrics(SAE.load(sae_dir), lm, HOOK, contexts, progress=False)
    tuned = finetune(ft_config(tmp_path, sae_dir), lm=lm)
    after = downstream_metrics(tuned, lm, HOOK, contexts, progress=False)
    gap0 = before["ce_loss_sae"] - before["ce_loss_clean"]
    gap1 = after["ce_loss_sae"] - after["ce_loss_clean"]
    assert gap0 > 0
    assert gap1 < 0.5 * gap0, (gap0, gap1)
    assert after["kl_div"] < before["kl_div"]
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, model_before[k]), k
    assert [p.requires_grad for p in lm.model.parameters()] == flags
    saved = SAE.load(tmp_path / "ft" / HOOK)
    assert not torch.equal(saved.W_enc, SAE.load(sae_dir).W_enc)  # the SAE did move
    rows = metrics(tmp_path / "ft")
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert all(r["l0"] == pytest.approx(4.0) for r in rows)  # TopK keeps its k


def test_mse_plus_kl_keeps_the_reconstruction_closer_than_kl_alone(tmp_path, lm, sae_dir):
    finetune(ft_config(tmp_path, sae_dir, out_dir=str(tmp_path / "kl")), lm=lm)
    finetune(ft_config(tmp_path, sae_dir, loss="mse+kl", mse_coeff=1.0, out_dir=str(tmp_path / "mkl")),
             lm=lm)
    fvu_kl = metrics(tmp_path / "kl")[-1]["fvu"]
    fvu_mkl = metrics(tmp_path / "mkl")[-1]["fvu"]
    assert fvu_mkl < fvu_kl


def test_a_transcoder_finetunes_too(tmp_path, lm):
    src, dst = "blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out"
    tc_dir = train_poor(tmp_path / "tc", hooks=[src], target_hook=dst)
    contexts = heldout(lm)
    before = downstream_metrics(SAE.load(tc_dir), lm, dst, contexts, source_hook=src, progress=False)
    tuned = finetune(ft_config(tmp_path, tc_dir, lr=3e-5), lm=lm)  # its KL is 4e-5 nats: 1e-4 overshoots
    assert tuned.is_transcoder and (tmp_path / "ft" / src / "cfg.json").exists()
    after = downstream_metrics(tuned, lm, dst, contexts, source_hook=src, progress=False)
    assert after["kl_div"] < before["kl_div"]


# --- resume ------------------------------------------------------------------------------------
class Crash(RuntimeError):
    pass


def test_a_run_resumed_after_a_crash_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, lm, sae_dir):
    kw = dict(tokens=S * 4 * 12, batch_contexts=4, checkpoint_every=S * 4 * 4, keep_checkpoints=5)
    full = finetune(ft_config(tmp_path, sae_dir, out_dir=str(tmp_path / "full"), **kw), lm=lm)

    calls = {"n": 0}

    def crash_on_the_15th_forward(module, args):  # two forwards a step: crashes in step 8
        calls["n"] += 1
        if calls["n"] == 15:
            raise Crash

    handle = lm.model.register_forward_pre_hook(crash_on_the_15th_forward)
    with pytest.raises(Crash):
        finetune(ft_config(tmp_path, sae_dir, out_dir=str(tmp_path / "run"), **kw), lm=lm)
    handle.remove()
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_000000004.pt"]
    assert not (tmp_path / "run" / HOOK).exists()
    with pytest.raises(ValueError, match="out_dir=.*holds checkpoints of an earlier run; pass resume=True"):
        finetune(ft_config(tmp_path, sae_dir, out_dir=str(tmp_path / "run"), **kw), lm=lm)
    with pytest.raises(ValueError, match=r"resume: lr=0.002 differs from the checkpoint's lr=0.001"):
        finetune(ft_config(tmp_path, sae_dir, out_dir=str(tmp_path / "run"), resume=True, lr=2e-3, **kw),
                 lm=lm)
    resumed = finetune(ft_config(tmp_path, sae_dir, out_dir=str(tmp_path / "run"), resume=True, **kw),
                       lm=lm)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert metrics(tmp_path / "run") == metrics(tmp_path / "full")


# --- bad values --------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, message", [
    ({"loss": "mse"}, "loss='mse': choose one of ['kl', 'ce', 'mse+kl']"),
    ({"decay": "step"}, "decay='step': choose one of ['linear', 'cosine', 'none']"),
    ({"exclude": "all"}, "exclude='all': choose one of ['special', 'bos', 'none']"),
    ({"sae": ""}, "sae='': must name an SAE folder"),
    ({"lr": 0.0}, "lr=0.0: must be a finite number > 0"),
    ({"mse_coeff": -1.0}, "mse_coeff=-1.0: must be a finite number >= 0"),
    ({"tokens": 100}, "tokens=100: must be at least batch_contexts x context_size = 1024"),
    ({"batch_contexts": 0}, "FinetuneConfig.batch_contexts=0: must be an integer >= 1"),
])
def test_bad_values_fail_naming_the_field_the_value_and_the_choices(kw, message):
    with pytest.raises(ValueError) as e:
        FinetuneConfig(**{"sae": "x", **kw})
    assert message in str(e.value)


def test_a_cache_of_another_corpus_is_refused_naming_both(tmp_path, lm, sae_dir):
    from saelens_lite.cache.harvest import HarvestConfig, harvest

    harvest(HarvestConfig(model="tiny-llama", hooks=[HOOK], tokens=512, context_size=32, device="cpu"),
            tmp_path / "acts", model=lm)
    with pytest.raises(ValueError, match="context_size=64: the activation cache .* was harvested with context_size=32"):
        finetune(ft_config(tmp_path, sae_dir, activations=str(tmp_path / "acts")), lm=lm)


def test_the_cli_names_a_bad_loss_and_the_choices_in_one_line(capsys):
    from saelens_lite.cli import main

    with pytest.raises(SystemExit) as e:
        main(["finetune", "--sae", "x", "--loss", "mse"])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --loss: invalid choice: 'mse' (choose from 'kl', 'ce', 'mse+kl')" in last


def test_the_cli_help_lists_every_config_field_with_its_default(capsys):
    import dataclasses

    from saelens_lite.cli import main

    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(FinetuneConfig):
        assert "--" + f.name.replace("_", "-") in out, f.name
    assert "(default: 100000)" in out and "{kl,ce,mse+kl}" in out
