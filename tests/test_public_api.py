"""The names exported by ``saelens_lite`` are the documented objects, whatever was imported
before (a submodule named like an export would shadow it)."""

import importlib

import pytest

import saelens_lite


def test_every_export_is_the_object_of_its_module_even_after_importing_submodules():
    for module in set(saelens_lite._EXPORTS.values()):
        importlib.import_module(module)  # binds submodules as package attributes
    from saelens_lite import HarvestConfig, harvest, train

    assert callable(harvest) and harvest.__module__ == "saelens_lite.cache.harvest"
    assert callable(train) and HarvestConfig.__name__ == "HarvestConfig"
    for name, module in saelens_lite._EXPORTS.items():
        assert getattr(saelens_lite, name) is getattr(importlib.import_module(module), name), name


def test_interventions_are_exported_as_functions_not_their_modules():
    from saelens_lite import attribute, generate, spliced
    from saelens_lite.interventions import ablate, ablation_check, add_direction

    for fn in (ablate, ablation_check, add_direction, attribute, generate, spliced):
        assert callable(fn) and fn.__module__.startswith("saelens_lite.interventions."), fn


def test_the_top_level_holds_the_main_verbs_and_their_configs_only():
    import saelens_lite.interventions as interventions

    verbs = {"load_model", "harvest", "train", "evaluate", "spliced", "generate", "attribute"}
    configs = {"HarvestConfig", "TrainConfig", "SAEConfig", "EvalConfig"}
    assert set(saelens_lite.__all__) == verbs | configs | {"SAE", "ActivationCache"}
    assert "spearman" not in interventions.__all__ and "spliced" in interventions.__all__
    for name in interventions.__all__:
        assert getattr(interventions, name).__module__.startswith("saelens_lite."), name


def test_lm_loads_its_exports_on_first_use_as_the_objects_of_their_modules():
    import saelens_lite.lm as lm

    assert set(lm.__all__) <= set(dir(lm))
    for name, module in lm._EXPORTS.items():
        assert getattr(lm, name) is getattr(importlib.import_module(f"saelens_lite.lm.{module}"), name), name
    from saelens_lite.lm import capture_rows, load_model

    assert capture_rows.__module__ == "saelens_lite.lm.capture" and load_model.__module__ == "saelens_lite.lm.load"
    with pytest.raises(AttributeError, match="no_such_name"):
        lm.no_such_name  # noqa: B018 (the access is the test)
