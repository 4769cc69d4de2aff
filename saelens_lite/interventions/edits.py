"""Feature edits: ablate, clamp, scale or add to an SAE's code, at all or chosen positions.

Shape legend: B batch, S sequence, D model width, F features.

An edit acts on the code ``c = encode(x)`` *after* the SAE's activation function, so a TopK
SAE's k-sparsity or a JumpReLU threshold is not applied again: ``c' = edit(c)``. Spliced with
the error term ``e = x - decode(c)`` (:mod:`saelens_lite.interventions.splice`) the activation
becomes ``decode(c') + e``, so the residual stream moves by exactly

    decode(c') - decode(c) = (c' - c) @ W_dec        (any linear decoder).

Kinds, for feature f at the chosen positions (edits on one SAE compose in the order given):

* ``ablate``: ``c'_f = 0``  (zero-ablation of one feature, as in Marks et al. 2024's circuits).
* ``clamp``:  ``c'_f = value``  (Templeton et al. 2024, "Scaling Monosemanticity", clamping).
* ``scale``:  ``c'_f = value * c_f``.
* ``add``:    ``c'_f = c_f + value * u_f``: the residual moves by ``value * u_f * W_dec_f``.
  With feature statistics ``u_f = max_f``, the feature's largest activation seen (a dashboard's
  ``FeatureStats.max_F``), so ``value = 1`` adds the feature as at its strongest; without them
  ``u_f = 1 / ||W_dec_f||``, so the residual moves by ``value * d_f`` with ``d_f`` the
  unit-norm decoder direction (activation addition, Turner et al. 2023). The bound edit's
  ``unit`` says which.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

EDIT_KINDS = ("ablate", "clamp", "scale", "add")
UNIT_MAX_ACTIVATION = "max_activation"
UNIT_DIRECTION = "unit_direction"
UNIT_CODE = "code"


@dataclass(frozen=True)
class FeatureEdit:
    """One edit of one feature of one SAE; build it with :func:`ablate`, :func:`clamp`,
    :func:`scale` or :func:`add_direction`."""

    kind: str
    """One of EDIT_KINDS: ablate, clamp, scale, add."""
    feature: int
    """Feature index in [0, d_sae) of the SAE at ``hook``."""
    value: float = 0.0
    """clamp: the value; scale: the factor; add: alpha (see the module docstring); ablate: unused."""
    hook: str | None = None
    """Hook of the SAE to edit; None when only one SAE is spliced."""
    positions: tuple[int, ...] | None = None
    """Token positions (0 = the first token of the unpadded sequence, prompt and generated tokens
    alike); None: every position."""

    def __post_init__(self) -> None:
        if self.kind not in EDIT_KINDS:
            raise ValueError(f"FeatureEdit.kind={self.kind!r} is invalid; allowed: {list(EDIT_KINDS)}")
        if not isinstance(self.feature, (int, np.integer)) or isinstance(self.feature, bool) \
                or self.feature < 0:
            raise ValueError(f"FeatureEdit.feature={self.feature!r} is invalid; allowed: an integer >= 0")
        object.__setattr__(self, "feature", int(self.feature))
        if not isinstance(self.value, (int, float, np.number)) or not math.isfinite(self.value):
            raise ValueError(f"FeatureEdit.value={self.value!r} is invalid; allowed: a finite number")
        if self.positions is not None:
            pos = tuple(self.positions)
            if not pos or any(not isinstance(p, (int, np.integer)) or p < 0 for p in pos):
                raise ValueError(f"FeatureEdit.positions={self.positions!r} is invalid; allowed: "
                                 "None (all) or a non-empty sequence of integers >= 0")
            object.__setattr__(self, "positions", tuple(int(p) for p in pos))


def ablate(feature: int, *, hook: str | None = None, positions: Sequence[int] | None = None):
    """``c'_f = 0``."""
    return FeatureEdit("ablate", feature, 0.0, hook, positions)


def clamp(feature: int, value: float, *, hook: str | None = None,
          positions: Sequence[int] | None = None):
    """``c'_f = value``."""
    return FeatureEdit("clamp", feature, value, hook, positions)


def scale(feature: int, factor: float, *, hook: str | None = None,
          positions: Sequence[int] | None = None):
    """``c'_f = factor * c_f``."""
    return FeatureEdit("scale", feature, factor, hook, positions)


def add_direction(feature: int, alpha: float, *, hook: str | None = None,
                  positions: Sequence[int] | None = None):
    """``c'_f = c_f + alpha * u_f``: add ``alpha`` times the feature's decoder direction, in units
    of its max activation when stats are given, else of the unit-norm direction."""
    return FeatureEdit("add", feature, alpha, hook, positions)


@dataclass(frozen=True)
class BoundEdit:
    """A FeatureEdit resolved against the spliced SAEs: its hook is known and ``add`` is in code
    units."""

    edit: FeatureEdit
    hook: str
    """Hook of the edited SAE."""
    code_value: float
    """What the edit writes in code units: clamp's value, scale's factor, add's
    ``alpha * u_f`` (0 for ablate)."""
    unit: str
    """``max_activation`` or ``unit_direction`` for add (what alpha was measured in); ``code``
    for the other kinds."""

    def describe(self) -> dict:
        e = self.edit
        return {"kind": e.kind, "hook": self.hook, "feature": e.feature, "value": e.value,
                "positions": None if e.positions is None else list(e.positions),
                "unit": self.unit, "code_value": self.code_value}


def max_activations(stats, d_sae: int) -> Tensor:
    """(F,) float64 max activation per feature from a dashboard's ``FeatureStats`` (``max_F``),
    an array or tensor of F values, or a ``{feature: max}`` mapping (NaN where unknown)."""
    if hasattr(stats, "max_F"):
        stats = stats.max_F
    if isinstance(stats, Mapping):
        out = torch.full((d_sae,), math.nan, dtype=torch.float64)
        for f, v in stats.items():
            if not 0 <= int(f) < d_sae:
                raise ValueError(f"stats name feature {f}, outside [0, {d_sae})")
            out[int(f)] = float(v)
        return out
    out = torch.as_tensor(np.asarray(stats), dtype=torch.float64).reshape(-1)
    if out.numel() != d_sae:
        raise ValueError(f"stats give {out.numel()} max activations; the SAE has d_sae={d_sae}")
    return out


def _stats_for(stats, hook: str, hooks: Sequence[str]):
    """The stats of ``hook``: ``stats`` is None, one SAE's stats, or ``{hook: stats}``."""
    if stats is None:
        return None
    if isinstance(stats, Mapping) and stats and all(isinstance(k, str) for k in stats):
        unknown = sorted(set(stats) - set(hooks))
        if unknown:
            raise ValueError(f"stats for hooks {unknown} with no SAE; spliced hooks: {list(hooks)}")
        return stats.get(hook)
    if len(hooks) > 1:
        raise ValueError(f"{len(hooks)} SAEs are spliced: pass stats as {{hook: stats}} "
                         f"with hooks from {list(hooks)}")
    return stats


def bind_edits(edits: Sequence[FeatureEdit], saes: Mapping[str, object], stats=None) -> list[BoundEdit]:
    """Check each edit against the spliced SAEs (hook, feature index) and put ``add`` in code
    units; raises ValueError naming the bad value and the valid choices."""
    hooks = list(saes)
    bound = []
    for e in edits:
        if not isinstance(e, FeatureEdit):
            raise TypeError(f"edits must be FeatureEdit objects (ablate, clamp, scale, add_direction), "
                            f"got {type(e).__name__}")
        hook = e.hook
        if hook is None:
            if len(hooks) != 1:
                raise ValueError(f"edit of feature {e.feature} names no hook; {len(hooks)} SAEs are "
                                 f"spliced: set hook= to one of {hooks}")
            hook = hooks[0]
        if hook not in saes:
            raise ValueError(f"edit hook={hook!r} has no spliced SAE; spliced hooks: {hooks}")
        sae = saes[hook]
        F_ = sae.cfg.d_sae
        if e.feature >= F_:
            raise ValueError(f"feature={e.feature} is out of range for the SAE at {hook!r}: "
                             f"valid indices are 0..{F_ - 1} (d_sae={F_})")
        code_value, unit = (0.0 if e.kind == "ablate" else e.value), UNIT_CODE
        if e.kind == "add":
            code_value, unit = _add_in_code_units(e, sae, _stats_for(stats, hook, hooks), hook)
        bound.append(BoundEdit(e, hook, code_value, unit))
    return bound


def _add_in_code_units(e: FeatureEdit, sae, stats, hook: str) -> tuple[float, str]:
    if stats is None:
        norm = float(sae.W_dec[e.feature].detach().double().norm())
        if norm == 0:
            raise ValueError(f"feature {e.feature} at {hook!r} has a zero decoder row: no direction")
        return e.value / norm, UNIT_DIRECTION
    m = float(max_activations(stats, sae.cfg.d_sae)[e.feature])
    if not m > 0:
        raise ValueError(f"feature {e.feature} at {hook!r} has max activation {m} in the stats "
                         "(dead or unknown): alpha cannot be in its units; pass no stats for "
                         "raw units of the unit-norm direction")
    return e.value * m, UNIT_MAX_ACTIVATION


def apply_edits(code_BSF: Tensor, edits: Sequence[BoundEdit], pos_BS: Tensor) -> Tensor:
    """``c'`` from ``c``: a copy of ``code_BSF`` with every edit applied in order where its
    positions match ``pos_BS`` (each token's position in its unpadded sequence)."""
    out = code_BSF.clone()
    for b in edits:
        e, f = b.edit, b.edit.feature
        col = out[..., f]
        if e.kind in ("ablate", "clamp"):
            new = torch.full_like(col, b.code_value)
        elif e.kind == "scale":
            new = col * b.code_value
        else:
            new = col + b.code_value
        if e.positions is None:
            out[..., f] = new
        else:
            at = torch.isin(pos_BS, torch.tensor(e.positions, device=pos_BS.device))
            out[..., f] = torch.where(at, new, col)
    return out


__all__ = ["EDIT_KINDS", "FeatureEdit", "BoundEdit", "ablate", "clamp", "scale", "add_direction",
           "bind_edits", "apply_edits", "max_activations", "UNIT_MAX_ACTIVATION", "UNIT_DIRECTION",
           "UNIT_CODE"]
