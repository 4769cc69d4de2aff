"""One config per architecture (issue 16 section 2, issue 24): `SAEConfig.build(architecture=...)`
and `SAEConfig.from_dict` build the registered config class (no metaclass), cfg.json stays flat,
every cfg.json written when one SAEConfig held every architecture's fields still loads, and a
field of another architecture is an error that names it and the valid fields."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

import pytest

from saelens_lite.saes import REGISTRY, SAE, SAEConfig, TopKConfig
from saelens_lite.saes.base import require_sparse_coder
from saelens_lite.saes.config import field_owners
from saelens_lite.saes.registry import entry
from saelens_lite.training import TrainConfig

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "saes"
OLD_CFGS = sorted(FIXTURES.glob("*/cfg.json"))


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_saeconfig_builds_the_config_class_registered_with_the_architecture(arch):
    cfg = SAEConfig.build(architecture=arch, d_in=16, d_sae=32, k=2)
    assert type(cfg) is REGISTRY[arch].config_class and isinstance(cfg, SAEConfig)
    assert type(SAE.from_config(cfg)) is REGISTRY[arch]
    d = json.loads(json.dumps(cfg.to_dict()))  # flat and JSON-safe
    assert all(not isinstance(v, dict) for v in d.values())
    assert SAEConfig.from_dict(d) == cfg
    assert dataclasses.replace(cfg, k=3).k == 3


@pytest.mark.parametrize("path", OLD_CFGS, ids=[p.parent.name for p in OLD_CFGS])
def test_every_cfg_json_of_the_single_config_loads_as_its_architectures_config(path):
    d = json.loads(path.read_text())
    cfg = SAEConfig.from_dict(d)
    assert type(cfg) is REGISTRY[d["architecture"]].config_class
    assert {k: v for k, v in d.items() if hasattr(cfg, k)} == {
        k: v for k, v in cfg.to_dict().items() if k in d}
    newer = {"target_hook", "skip", "b_enc_init", "decoder_init",  # fields the files predate
             "decoder_norm", "decoder_init_norm"}
    assert set(d) > set(cfg.to_dict()) - newer  # the others' fields dropped


def test_a_field_of_another_architecture_loads_only_at_its_default():
    d = SAEConfig.build(architecture="topk", d_in=8, d_sae=16, k=2).to_dict()
    assert SAEConfig.from_dict(d | {"jumprelu_bandwidth": 1.0, "vae_beta": 1.0}).architecture == "topk"
    with pytest.raises(ValueError, match=r"SAEConfig.jumprelu_bandwidth=2.0 is invalid for "
                                         r"architecture 'topk': a field of \['jumprelu'\]"):
        SAEConfig.from_dict(d | {"jumprelu_bandwidth": 2.0})
    # today's trainer set TrainConfig.sparsity_coeff on every architecture: any value loads
    assert SAEConfig.from_dict(d | {"l1_coeff": 2.0, "l0_coeff": 2.0}) == SAEConfig.from_dict(d)
    with pytest.raises(ValueError, match=r"unknown fields \['nope'\]"):
        SAEConfig.from_dict(d | {"nope": 1})


def test_batchtopk_configs_saved_before_relative_threshold_keep_the_raw_rule():
    d = SAEConfig.build(architecture="batchtopk", d_in=8, d_sae=16, k=2).to_dict()
    del d["relative_threshold"]
    assert SAEConfig.from_dict(d).relative_threshold is False


def test_build_names_a_field_of_another_architecture_and_the_valid_fields():
    with pytest.raises(ValueError, match=r"SAEConfig.jumprelu_bandwidth=0.5 is invalid for "
                                         r"architecture 'topk' \(a field of \['jumprelu'\]\); "
                                         r"allowed: \[.*'multi_topk'"):
        SAEConfig.build(architecture="topk", d_in=8, d_sae=16, k=2, jumprelu_bandwidth=0.5)
    with pytest.raises(ValueError, match=r"SAEConfig.nope=1 is invalid .*no architecture has it"):
        SAEConfig.build(architecture="topk", nope=1)


def test_an_unknown_architecture_names_the_valid_choices():
    for call in (lambda: SAEConfig.build(architecture="nope"),
                 lambda: SAEConfig.from_dict({"architecture": "nope"})):
        with pytest.raises(ValueError, match=r"SAEConfig.architecture='nope' is invalid; allowed: "
                                             + re.escape(str(sorted(REGISTRY)))):
            call()


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_from_dict_round_trips_every_registered_architecture(arch):
    cfg = SAEConfig.build(architecture=arch, d_in=16, d_sae=32, k=2, hook_name="h", dtype="float64")
    assert entry(arch) == (REGISTRY[arch], type(cfg))
    assert SAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    template = cfg.to_template()
    assert (template.d_in, template.d_sae, template.sized) == (0, 0, False)
    assert SAEConfig.from_dict(template.to_dict()) == template
    with pytest.raises(ValueError, match=r"d_in=0, d_sae=0 is invalid for an SAE"):
        SAE.from_config(template)


def test_size_checks_wait_for_the_sizes():
    cfg = SAEConfig.build(architecture="matryoshka", k=4, matryoshka_groups=[8, 32])
    assert not cfg.sized
    assert dataclasses.replace(cfg, d_in=8, d_sae=40).matryoshka_groups == [8, 32]
    with pytest.raises(ValueError, match=r"matryoshka_groups=\[8, 32\] is invalid.*d_sae=30"):
        dataclasses.replace(cfg, d_in=8, d_sae=30)


def test_a_config_class_accepts_only_its_own_fields():
    with pytest.raises(TypeError, match="jumprelu_bandwidth"):
        TopKConfig(jumprelu_bandwidth=0.5)
    with pytest.raises(ValueError, match=r"SAEConfig.architecture='relu' is invalid"):
        TopKConfig(architecture="relu")


def test_train_options_of_another_architecture_name_it():
    with pytest.raises(ValueError, match=r"sae_options.multi_topk=True: an option of \['topk'\] "
                                         r"only, not of architecture='batchtopk'"):
        TrainConfig.from_dict({"architecture": "batchtopk", "sae_options": {"multi_topk": True}})
    with pytest.raises(ValueError, match=r"sae_options.nope=1: no architecture's option"):
        TrainConfig.from_dict({"architecture": "topk", "sae_options": {"nope": 1}})
    cfg = TrainConfig.from_dict({"architecture": "batchtopk", "sae_options": {"relative_threshold": False}})
    assert cfg.sae == SAEConfig.build(architecture="batchtopk", relative_threshold=False)


def test_shared_fields_are_every_architectures():
    owners = field_owners()
    for f in dataclasses.fields(SAEConfig):
        assert owners[f.name] == sorted(REGISTRY), f.name


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_a_baseline_is_refused_where_a_sparse_coder_is_needed(arch):
    sae = SAE.from_config(SAEConfig.build(architecture=arch, d_in=16, d_sae=32, k=2))
    baseline = type(sae).__module__.startswith("saelens_lite.saes.baselines.")
    assert REGISTRY[arch].is_sparse_coder is not baseline  # the capability, read from the class
    if not baseline:
        require_sparse_coder(sae, "a feature dashboard")
        return
    with pytest.raises(ValueError, match=rf"a feature dashboard needs a sparse coder; got "
                                         rf"\w+ \(architecture '{arch}', a baseline autoencoder\); "
                                         r"allowed: \[.*'topk'"):
        require_sparse_coder(sae, "a feature dashboard")
