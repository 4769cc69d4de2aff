"""SAE configs: `SAEConfig`, the fields every architecture shares, and one subclass per
architecture beside its class (TopKConfig in saes/topk.py, ...), each registered as the SAE
class's `config_class` (see saes/registry.py). `cfg.json` is the flat `to_dict()`.

Plain dataclasses: `TopKConfig(...)` builds a TopK config; `SAEConfig.build(architecture=...,
**fields)` looks the class up in the registry (an error names a field of another architecture
and the valid fields); `SAEConfig.from_dict` reads every cfg.json, including those written when
one SAEConfig held every architecture's fields (see there).

`d_in = d_sae = 0` (the defaults) is a config not sized yet: `TrainConfig.sae` is one, and the
trainer sets both per hook from the data. Checks that need the sizes run once they are set; an
SAE is built only from a sized config.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch

from saelens_lite.saes.registry import REGISTRY, architectures, entry

FORMAT_VERSION = 1
PARAM_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
ParamDtype = Literal["float32", "float64", "bfloat16", "float16"]
"""An SAE's parameter dtype (`PARAM_DTYPES` maps each to torch)."""
DecoderInit = Literal["auto", "random", "codes"]
"""How init_from_data_ sets W_dec (SAEConfig.decoder_init)."""
BDecInit = Literal["geometric_median", "mean", "zeros"]
"""How init_from_data_ sets b_dec (SAEConfig.b_dec_init)."""
BEncInit = Literal["auto", "centre", "zeros"]
"""How init_from_data_ sets b_enc (SAEConfig.b_enc_init)."""
B_DEC_INITS = get_args(BDecInit)
B_ENC_INITS = get_args(BEncInit)
DECODER_INITS = get_args(DecoderInit)


def invalid(field: str, value, allowed: str) -> ValueError:
    """The error of a config field: its name, the bad value and what is allowed."""
    return ValueError(f"SAEConfig.{field}={value!r} is invalid; allowed: {allowed}")


def check_numbers(cfg, names: tuple[str, ...], *, positive: bool = False) -> None:
    """Each field is a finite number, >= 0 (> 0 with `positive`)."""
    for name in names:
        v = getattr(cfg, name)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isinf(v)
        if not (ok and (v > 0 if positive else v >= 0)):
            raise invalid(name, v, f"a finite number {'>' if positive else '>='} 0")


def check_bools(cfg, names: tuple[str, ...]) -> None:
    for name in names:
        if not isinstance(getattr(cfg, name), bool):
            raise invalid(name, getattr(cfg, name), "True or False")


def config_class(architecture: str) -> type[SAEConfig]:
    """The config class registered with an architecture's SAE class."""
    if architecture not in REGISTRY:
        raise invalid("architecture", architecture, str(architectures()))
    return entry(architecture).config_class


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def field_owners() -> dict[str, list[str]]:
    """Every registered config field -> the architectures whose config has it."""
    owners: dict[str, list[str]] = {}
    for name in architectures():
        for f in field_names(config_class(name)):
            owners.setdefault(f, []).append(name)
    return owners


def foreign_fields(architecture: str, names) -> dict[str, list[str]]:
    """The names that are not fields of `architecture`'s config -> the architectures that have
    them ([] for a field no architecture has)."""
    own, owners = field_names(config_class(architecture)), field_owners()
    return {n: owners.get(n, []) for n in sorted(set(names) - own)}


@dataclass
class SAEConfig:
    """The fields every architecture shares; each architecture's config subclasses it."""

    sparsity_field: ClassVar[str | None] = None
    """The field the train command's --sparsity-coeff sets (training.sae_flags; relu: l1_coeff,
    jumprelu: l0_coeff)."""
    legacy_defaults: ClassVar[dict] = {}
    """Values of fields missing from a saved cfg.json that predates them, where those differ
    from today's defaults (batchtopk: relative_threshold=False)."""

    architecture: str = "topk"
    """Registered architecture name (see saelens_lite.saes.REGISTRY)."""
    d_in: int = 0
    """Model width D: size of the activations the SAE reads. 0: not sized yet (set by the
    trainer from the data)."""
    d_sae: int = 0
    """Number of latents F. 0: not sized yet (the trainer sets `TrainConfig.expansion * d_in`)."""
    k: int = 32
    """Active latents per token for topk (exact) and batchtopk (on average over the batch);
    the target L0 of jumprelu."""
    b_dec_init: BDecInit = "geometric_median"
    """How init_from_data_ sets b_dec: geometric_median (Weiszfeld), mean or zeros."""
    b_enc_init: BEncInit = "auto"
    """How init_from_data_ sets b_enc: centre (b_enc = -mean(x - b_pre) W_enc over the sample, so
    every latent's pre-activation starts with mean zero), zeros, or auto: centre for a
    transcoder, zeros for an SAE. A transcoder's encoder does not subtract b_dec, so without
    it each pre-activation is offset by mean(x) W_enc and the same latents win every token."""
    decoder_init: DecoderInit = "auto"
    """How init_from_data_ sets W_dec: random (unit rows, W_enc = W_dec^T: Gao et al. 2024's
    tied start), codes (each row the normalised sum over the sample of the latent's initial
    code times its residual target, sum_n z_nf (y_n - b_dec): the direction the target takes
    where the latent fires; W_enc is kept), or auto: codes for a transcoder, random for an SAE.
    A transcoder's random decoder rows are unrelated to its encoder's, so most latents start
    writing against their tokens' targets and the main loss switches them off
    (docs/transcoders.md, "Dead latents")."""
    hook_name: str = ""
    """Hook point the SAE was trained on (informational); a transcoder's input."""
    target_hook: str = ""
    """Empty: an SAE (it reconstructs its input). Set: a transcoder, which reads hook_name and
    reconstructs the activations at this hook (Dunefsky et al. 2024, "Transcoders find
    interpretable LLM feature circuits"); its encoder does not subtract b_dec, which lives in
    the target space. Only for the sparse architectures."""
    skip: bool = False
    """Transcoders only: a learned linear skip connection, x_hat = decode(acts) + x @ W_skip with
    W_skip (D, D) initialised to zero (Paulo et al. 2025, "Transcoders beat sparse autoencoders
    for interpretability")."""
    model_name: str = ""
    """Model the activations came from (informational)."""
    dtype: ParamDtype = "float32"
    """Parameter dtype: float32, float64, bfloat16 or float16."""
    format_version: int = FORMAT_VERSION
    """Version of the saved folder format (cfg.json + sae.safetensors)."""

    def __post_init__(self) -> None:
        if self.architecture not in REGISTRY:
            raise invalid("architecture", self.architecture, str(architectures()))
        if config_class(self.architecture) is not type(self):
            mine = [a for a in architectures() if config_class(a) is type(self)]
            raise invalid("architecture", self.architecture, f"{mine} for {type(self).__name__}")
        for name in ("d_in", "d_sae"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise invalid(name, v, "an integer >= 1, or 0 for a config not sized yet")
        if (
            not isinstance(self.k, int)
            or self.k < 1
            or (REGISTRY[self.architecture].uses_k and self.d_sae > 0 and self.k > self.d_sae)
        ):
            raise invalid("k", self.k, f"an integer in [1, d_sae={self.d_sae}]")
        if not isinstance(self.target_hook, str):
            raise invalid("target_hook", self.target_hook, "a hook name, or '' for an SAE")
        if not isinstance(self.skip, bool) or (self.skip and not self.target_hook):
            raise invalid("skip", self.skip, "True or False; True only with target_hook set")
        if self.b_dec_init not in B_DEC_INITS:
            raise invalid("b_dec_init", self.b_dec_init, str(list(B_DEC_INITS)))
        if self.decoder_init not in DECODER_INITS:
            raise invalid("decoder_init", self.decoder_init, str(list(DECODER_INITS)))
        if self.b_enc_init not in B_ENC_INITS:
            raise invalid("b_enc_init", self.b_enc_init, str(list(B_ENC_INITS)))
        if self.dtype not in PARAM_DTYPES:
            raise invalid("dtype", self.dtype, str(list(PARAM_DTYPES)))
        if (
            not isinstance(self.format_version, int)
            or not 1 <= self.format_version <= FORMAT_VERSION
        ):
            raise invalid(
                "format_version", self.format_version, f"an integer in [1, {FORMAT_VERSION}]"
            )

    @property
    def sized(self) -> bool:
        """Whether d_in and d_sae are set (a config not sized yet is TrainConfig.sae's template)."""
        return self.d_in > 0 and self.d_sae > 0

    @property
    def torch_dtype(self) -> torch.dtype:
        return PARAM_DTYPES[self.dtype]

    @property
    def free_decoder(self) -> bool:
        """Whether the decoder rows are free in norm. False here: the SAE class's
        ``unit_norm_decoder`` alone decides; the k-sparse configs (saes.terms.AuxKConfig) let
        ``decoder_norm`` free them."""
        return False

    @property
    def decoder_start_norm(self) -> float:
        """The decoder rows' norm at init: 1 here (AuxKConfig: ``decoder_init_norm``)."""
        return 1.0

    def to_dict(self) -> dict:
        """The flat dict saved as cfg.json: this architecture's fields."""
        return dataclasses.asdict(self)

    @staticmethod
    def build(architecture: str = "topk", **fields) -> SAEConfig:
        """The registered config class of `architecture` built from its own fields; a field of
        other architectures (or of none) is an error that names it and the valid fields."""
        target = config_class(architecture)
        foreign = foreign_fields(architecture, fields)
        if foreign:
            name, owners = next(iter(foreign.items()))
            where = f" (a field of {owners})" if owners else " (no architecture has it)"
            raise ValueError(f"SAEConfig.{name}={fields[name]!r} is invalid for architecture "
                             f"{architecture!r}{where}; allowed: {sorted(field_names(target))}")
        return target(architecture=architecture, **fields)

    @staticmethod
    def from_dict(d: dict) -> SAEConfig:
        """The config of a saved cfg.json, including those written when one SAEConfig held
        every architecture's fields: a field of other architectures is dropped when it holds
        its default (or is a `sparsity_field`, which the trainer then set on every
        architecture), else it is an error naming it. Fields the cfg.json predates take
        `legacy_defaults`."""
        arch = d.get("architecture", "topk")
        target = config_class(arch)
        owners = foreign_fields(arch, d)
        unknown = sorted(n for n, o in owners.items() if not o)
        if unknown:
            raise ValueError(f"SAEConfig got unknown fields {unknown}; allowed: "
                             f"{sorted(field_owners())}")  # fmt: skip
        lenient = {config_class(a).sparsity_field for a in architectures()}
        for name, archs in owners.items():
            default = getattr(config_class(archs[0]), name)
            if d[name] != default and name not in lenient:
                raise ValueError(
                    f"SAEConfig.{name}={d[name]!r} is invalid for architecture {arch!r}: a field "
                    f"of {archs}; allowed: its default {default!r} (a cfg.json written when "
                    "SAEConfig held every architecture's fields)"
                )
        own = {k: v for k, v in d.items() if k not in owners}
        return target(**(target.legacy_defaults | own))

    def to_template(self) -> SAEConfig:
        """This config not sized (d_in = d_sae = 0): what TrainConfig.sae holds."""
        return dataclasses.replace(self, d_in=0, d_sae=0)
