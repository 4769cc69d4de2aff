"""The flat spelling of ``TrainConfig.sae`` (:class:`SAEFlags`): the ``train`` command's flags
and the keys of a run's config.json written before the SAE config was nested (issue 24). One
mapping, read by the CLI and by ``TrainConfig.from_dict``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saelens_lite.saes.config import SAEConfig


def architectures() -> list[str]:
    """Registered SAE architectures (read from the registry; never listed twice)."""
    from saelens_lite.saes import REGISTRY  # here, not at the top: --help stays torch-free

    return sorted(REGISTRY)


@dataclass
class SAEFlags:
    """The flat spelling of ``TrainConfig.sae``: the ``train`` command's flags (``--arch relu
    --sparsity-coeff 5 --option aux_k=64``) and the keys of a run's config.json written before
    the SAE config was nested in TrainConfig (issue 24). :meth:`sae_config` nests them."""

    architecture: str = "topk"
    """SAE architecture, a name in ``saelens_lite.saes.REGISTRY``."""
    k: int = 32
    """Active latents per token, for architectures that use it (TopK, BatchTopK)."""
    latents: int | None = None
    """Number of latents d_sae; overrides ``expansion``."""
    sparsity_coeff: float | None = None
    """Coefficient of the sparsity penalty (the L1 coefficient of ReLU SAEs, the L0 coefficient
    of JumpReLU); None keeps the architecture's default."""
    sae_options: dict = field(default_factory=dict)
    """Further ``SAEConfig`` fields for the architecture (e.g. ``{"aux_coeff": 0.05}``)."""
    target_hook: str = ""
    """Train a transcoder: the coder reads the one hook in ``hooks`` and reconstructs this hook's
    activations of the same tokens (e.g. ``blocks.9.hook_mlp_in`` -> ``blocks.9.hook_mlp_out``,
    Dunefsky et al. 2024; ``training.targets``). A pattern (``blocks.*.hook_mlp_out``, ``blocks.[0-3].hook_mlp_out``) pairs its
    i-th match with the i-th input hook: one transcoder per pair from one model forward per
    batch. Empty: an SAE (the target is the input)."""
    skip: bool = False
    """With ``target_hook``: add a learned linear skip connection ``x @ W_skip`` (D, D),
    zero-initialised, to the transcoder's output (Paulo et al. 2025)."""
    b_dec_init: str = "geometric_median"
    """Decoder-bias init from a data sample: geometric_median, mean or zeros."""
    # (str here: its choices are SAEConfig.b_dec_init's Literal, which the CLI reads)

    def sae_config(self) -> SAEConfig:
        """The nested config: the architecture's config class, not sized (d_in = 0; d_sae =
        ``latents`` or 0), with ``sparsity_coeff`` in the class's ``sparsity_field``."""
        from saelens_lite.saes.config import SAEConfig, config_class

        self.check_options()
        if self.skip and not self.target_hook:
            raise ValueError("skip=True: a skip connection belongs to a transcoder; set target_hook "
                             "(e.g. --hooks blocks.9.hook_mlp_in --target-hook blocks.9.hook_mlp_out)")
        if self.latents is not None and (not isinstance(self.latents, int) or self.latents < 1):
            raise ValueError(f"latents={self.latents!r}: must be None or an integer >= 1")
        if self.sparsity_coeff is not None and not (_finite_number(self.sparsity_coeff) and self.sparsity_coeff >= 0):
            raise ValueError(f"sparsity_coeff={self.sparsity_coeff!r}: must be a finite number >= 0")
        fields = {"k": self.k, "b_dec_init": self.b_dec_init, "d_sae": self.latents or 0,
                  "target_hook": self.target_hook, "skip": self.skip}
        sparsity_field = config_class(self.architecture).sparsity_field
        if self.sparsity_coeff is not None and sparsity_field is not None:
            fields[sparsity_field] = self.sparsity_coeff  # relu: l1_coeff, jumprelu: l0_coeff
        return SAEConfig.build(architecture=self.architecture, **(fields | self.sae_options))

    def check_options(self) -> None:
        """Each key of ``sae_options`` is a field of the architecture's config class; a field of
        other architectures only is an error that names them."""
        from saelens_lite.saes.config import config_class, foreign_fields

        archs = architectures()
        if self.architecture not in archs:
            raise ValueError(f"architecture={self.architecture!r}: choose one of {archs}")
        if not isinstance(self.sae_options, dict):
            raise ValueError(f"sae_options={self.sae_options!r}: must be a dict of SAEConfig fields")
        foreign = foreign_fields(self.architecture, self.sae_options)
        if foreign:
            name, owners = next(iter(foreign.items()))
            where = f"an option of {owners} only" if owners else "no architecture's option"
            raise ValueError(f"sae_options.{name}={self.sae_options[name]!r}: {where}, not of "
                             f"architecture={self.architecture!r}; its options: "
                             f"{sorted(f.name for f in dataclasses.fields(config_class(self.architecture)))}")


FLAT_SAE_FIELDS = frozenset(f.name for f in dataclasses.fields(SAEFlags))
"""TrainConfig keys of the flat spelling (SAEFlags), read by TrainConfig.from_dict."""


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


__all__ = ["SAEFlags", "FLAT_SAE_FIELDS", "architectures"]
