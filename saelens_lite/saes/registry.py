"""The one registry of autoencoder architectures: name -> SAE subclass (whose `config_class` is
its config dataclass; `entry(name)` gives both).

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
        config_class = MatryoshkaConfig          # read by SAEConfig.build / from_dict, SAE.load
        supports_fast_step = False               # capabilities: class attributes (saes.base.SAE)

`SAEConfig.build(architecture="matryoshka", ...)`, `SAEConfig.from_dict`, cfg.json, `SAE.load`,
`TrainConfig(sae=MatryoshkaConfig(...))` and the train command's ``--option`` then know its
fields. Capabilities (`is_sparse_coder`, `tokenwise`, `uses_k`, `supports_transcoder`, ...) are
properties of the math, read through the registry; trainer policy (the default lr's short-run
factor, data-parallel statistics) lives in saelens_lite.training. The fast step covers a
class with `supports_fast_step = True` (and `fast_step_supports(options)` for option-dependent
cases) that defines `sparse_candidates`, `sparse_keep` and `sparse_selected_` (see SAE).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from saelens_lite.saes.base import SAE
    from saelens_lite.saes.config import SAEConfig

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


class Entry(NamedTuple):
    """What the registry holds for one architecture."""

    sae_class: type[SAE]
    """The SAE subclass (capabilities are its class attributes)."""
    config_class: type[SAEConfig]
    """Its config dataclass (cfg.json's fields)."""


def entry(name: str) -> Entry:
    """(SAE class, config class) of a registered architecture; an unknown name is an error that
    names the valid ones."""
    cls = get_sae_class(name)
    return Entry(cls, cls.config_class)


def get_sae_class(name: str) -> type[SAE]:
    if name not in REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; allowed: {architectures()}")
    return REGISTRY[name]
