"""saelens_lite: harvest activations, train sparse autoencoders, evaluate and browse features.

Public API (imported lazily so that ``import saelens_lite`` and ``--help`` stay fast)::

    from saelens_lite import load_model, harvest, HarvestConfig, ActivationCache, train, TrainConfig
    from saelens_lite import SAE, SAEConfig, evaluate, EvalConfig, spliced, generate, attribute
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# The main verbs and their configs; everything else is imported from its package.
_EXPORTS = {
    "load_model": "saelens_lite.lm.load",
    "harvest": "saelens_lite.cache.harvest",
    "HarvestConfig": "saelens_lite.cache.harvest",
    "ActivationCache": "saelens_lite.cache",
    "train": "saelens_lite.training",
    "TrainConfig": "saelens_lite.training",
    "SAE": "saelens_lite.saes",
    "SAEConfig": "saelens_lite.saes",
    "evaluate": "saelens_lite.evals",
    "EvalConfig": "saelens_lite.evals",
    "spliced": "saelens_lite.interventions",
    "generate": "saelens_lite.interventions",
    "attribute": "saelens_lite.interventions",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'saelens_lite' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
