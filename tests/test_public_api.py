"""The names exported by ``saelens_lite`` are the documented objects, whatever was imported
before (a submodule named like an export would shadow it)."""

import importlib

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
    from saelens_lite import ablate, ablation_check, add_direction, attribute, generate, spliced

    for fn in (ablate, ablation_check, add_direction, attribute, generate, spliced):
        assert callable(fn) and fn.__module__.startswith("saelens_lite.interventions."), fn
