"""saelens_lite: harvest activations, train sparse autoencoders, evaluate and browse features.

Public API (imported lazily so that ``import saelens_lite`` and ``--help`` stay fast)::

    from saelens_lite import load_model, harvest, HarvestConfig, ActivationCache
    from saelens_lite import spliced, ablate, add_direction, generate, attribute
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "saelens_lite.lm.load",
    "LoadedModel": "saelens_lite.lm.load",
    "list_hook_points": "saelens_lite.lm.hooks",
    "capture": "saelens_lite.lm.hooks",
    "harvest": "saelens_lite.cache.harvest",
    "HarvestConfig": "saelens_lite.cache.harvest",
    "ActivationCache": "saelens_lite.cache",
    "CacheWriter": "saelens_lite.cache",
    "train": "saelens_lite.training",
    "TrainConfig": "saelens_lite.training",
    "SAE": "saelens_lite.saes",
    "SAEConfig": "saelens_lite.saes",
    "spliced": "saelens_lite.interventions",
    "FeatureEdit": "saelens_lite.interventions",
    "ablate": "saelens_lite.interventions",
    "clamp": "saelens_lite.interventions",
    "scale": "saelens_lite.interventions",
    "add_direction": "saelens_lite.interventions",
    "generate": "saelens_lite.interventions",
    "attribute": "saelens_lite.interventions",
    "ablation_check": "saelens_lite.interventions",
    "token_loss_effects": "saelens_lite.interventions",
    "load_site_stats": "saelens_lite.interventions",
    "evaluate": "saelens_lite.evals",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'saelens_lite' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
