"""The one registry of autoencoder architectures: name -> SAE subclass.

CLI choices, `SAE.load`, config validation and the test parametrisation all read `REGISTRY`;
no list of architecture names is written anywhere else.

Adding an architecture is one module (e.g. saes/matryoshka.py), imported in saes/__init__.py:

    @dataclass
    class MatryoshkaConfig(BatchTopKConfig):     # SAEConfig, or the config of the parent class
        architecture: str = "matryoshka"         # its registered name is the default
        group_sizes: list[int] = ...             # its own fields, a docstring under each
        def __post_init__(self):                 # validates its own fields (saes.config.invalid
            super().__post_init__()              # names field, value and what is allowed)
            ...

    @register("matryoshka")
    class MatryoshkaSAE(BatchTopKSAE):
        config_class = MatryoshkaConfig          # read by SAEConfig.build(architecture=...), SAE.load
        supports_fast_step = False               # capabilities: class attributes (saes.base.SAE)

`SAEConfig.build(architecture="matryoshka", ...)`, `SAEConfig.from_dict`, cfg.json, `SAE.load` and
`TrainConfig.sae_options` (the CLI's ``--option``) then know its fields. The fast step covers a
class with `supports_fast_step = True` (and `fast_step_supports(options)` for option-dependent
cases) that defines `sparse_candidates`, `sparse_keep` and `sparse_selected_` (see SAE).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saelens_lite.saes.base import SAE

REGISTRY: dict[str, type[SAE]] = {}


def register(name: str) -> Callable[[type[SAE]], type[SAE]]:
    """Class decorator: `@register("topk") class TopKSAE(SAE)`. Sets `cls.architecture = name`."""

    def deco(cls: type[SAE]) -> type[SAE]:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(
                f"architecture {name!r} is already registered to {REGISTRY[name].__name__}"
            )
        cls.architecture = name
        REGISTRY[name] = cls
        return cls

    return deco


def architectures() -> list[str]:
    """Registered architecture names, sorted (for CLI choices)."""
    return sorted(REGISTRY)


def fast_step_architectures() -> list[str]:
    """Architectures whose class says the fast step covers it (``SAE.supports_fast_step``)."""
    return sorted(n for n, c in REGISTRY.items() if c.supports_fast_step)


def get_sae_class(name: str) -> type[SAE]:
    if name not in REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; allowed: {architectures()}")
    return REGISTRY[name]
