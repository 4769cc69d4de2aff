"""TrainConfig nests the SAE's config (`TrainConfig.sae`, issue 24): a template sized per hook
from the data, a run's config.json written before the nesting (flat keys) still loads to the
same config, and the train command's flat flags map onto it."""

from __future__ import annotations

import json

import pytest

from saelens_lite.cli import build_parser
from saelens_lite.cli.train import config_from_args
from saelens_lite.saes import REGISTRY, SAEConfig, TopKConfig
from saelens_lite.training import TrainConfig
from saelens_lite.training.config import takes_short_run_factor
from saelens_lite.training.hook_state import build_sae

# the keys of a relu run's config.json as the trainer wrote it before the nesting
OLD_FLAT = {"architecture": "relu", "hooks": ["h"], "expansion": 8, "latents": 64, "k": 32,
            "sparsity_coeff": 2.5, "sae_options": {"b_enc_init": "zeros"}, "target_hook": "",
            "skip": False, "b_dec_init": "mean", "lr": 1e-3, "tokens": 8192, "batch_size": 512,
            "format_version": 1, "n_tokens": 8192, "widths": {"h": 16}}


def test_the_default_sae_is_a_topk_template_not_sized():
    sae = TrainConfig().sae
    assert type(sae) is TopKConfig and (sae.d_in, sae.d_sae, sae.k) == (0, 0, 32)


def test_an_old_flat_config_json_loads_as_the_nested_config():
    cfg = TrainConfig.from_dict(OLD_FLAT)
    expected = SAEConfig.build(architecture="relu", d_sae=64, l1_coeff=2.5, b_enc_init="zeros",
                               b_dec_init="mean")
    assert cfg.sae == expected
    assert (cfg.hooks, cfg.lr, cfg.tokens) == (["h"], 1e-3, 8192)


def test_the_nested_config_round_trips_through_json():
    cfg = TrainConfig(sae=SAEConfig.build(architecture="jumprelu", k=4, l0_coeff=3.0), hooks=["h"])
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_flat_and_nested_spellings_together_are_an_error():
    with pytest.raises(ValueError, match=r"TrainConfig \['k'\]: the flat spelling of sae"):
        TrainConfig.from_dict({"k": 4, "sae": TopKConfig(k=4).to_dict()})
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['nope'\]; allowed: .*'sae'"):
        TrainConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError, match=r"sae=\{'k': 4\}: must be an SAEConfig"):
        TrainConfig(sae={"k": 4})


def test_resume_names_a_changed_sae_field_and_reads_old_flat_checkpoints():
    old = TrainConfig.from_dict(OLD_FLAT)
    assert old.resume_mismatch(OLD_FLAT) == []  # a flat checkpoint config of the same run
    changed = TrainConfig.from_dict(OLD_FLAT | {"sparsity_coeff": 3.0, "out_dir": "elsewhere"})
    assert changed.resume_mismatch(OLD_FLAT) == ["sae.l1_coeff"]
    assert changed.value_of("sae.l1_coeff") == 3.0


def test_build_sae_sizes_the_template_per_hook():
    cfg = TrainConfig(sae=TopKConfig(k=4), expansion=3, model="tiny-llama")
    sae = build_sae(cfg, 16, "blocks.0.hook_resid_post")
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (16, 48, 4)
    assert (sae.cfg.hook_name, sae.cfg.model_name) == ("blocks.0.hook_resid_post", "tiny-llama")
    assert cfg.sae.d_in == 0  # the template is not changed
    assert build_sae(TrainConfig(sae=TopKConfig(d_sae=20, k=4)), 16).cfg.d_sae == 20
    with pytest.raises(ValueError, match=r"sae.d_in=8: hook 'h' has width 16"):
        build_sae(TrainConfig(sae=TopKConfig(d_in=8, k=4)), 16, "h")
    with pytest.raises(ValueError, match=r"k=40: must be at most the number of latents d_sae=32"):
        build_sae(TrainConfig(sae=TopKConfig(k=40), expansion=2), 16, "h")


def test_the_train_flags_map_onto_the_nested_config():
    args = build_parser().parse_args(
        ["train", "--arch", "relu", "--latents", "64", "--sparsity-coeff", "2.5", "--b-dec-init",
         "mean", "--option", "b_enc_init=zeros", "--hooks", "h", "--lr", "1e-3", "--tokens", "8192",
         "--batch-size", "512"])
    assert config_from_args(args) == TrainConfig.from_dict(OLD_FLAT)
    args = build_parser().parse_args(["train", "--arch", "batchtopk", "--option", "multi_topk=true"])
    with pytest.raises(ValueError, match=r"sae_options.multi_topk=True: an option of \['topk'\]"):
        config_from_args(args)


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_the_short_run_lr_factor_is_trainer_policy_read_from_the_registry(arch):
    sae = SAEConfig.build(architecture=arch)
    measured_to_help = {"topk", "batchtopk", "matryoshka", "jumprelu"}  # docs/quality_vs_peers.md
    assert takes_short_run_factor(sae) == (arch in measured_to_help)
    assert not hasattr(REGISTRY[arch], "short_run_lr")  # not a property of the SAE class
    assert not hasattr(REGISTRY[arch], "batch_mean")  # the step's batch_statistics (training)
