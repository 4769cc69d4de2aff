"""``spliced()``: the model with SAEs spliced in and feature edits applied to their codes.

The splice itself (the math, the error term, recording the nodes for attribution) is the one
of :mod:`saelens_lite.lm.splice`, shared with the evaluation's spliced-model loss; this module
turns the user's SAEs and :class:`~saelens_lite.interventions.edits.FeatureEdit` objects into
its sites and per-hook code edits. In short, at every spliced hook and kept token::

    x' = decode(edits(encode(x))) + (x - decode(encode(x)))     keep_error=True (default)
    x' = decode(edits(encode(x)))                               keep_error=False

so an unedited splice with the error kept is the clean model up to float rounding, and an edit
moves the activation by exactly ``(c' - c) @ W_dec``.

Shape legend: B batch, S sequence, D model width, F features.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from saelens_lite.interventions.edits import BoundEdit, FeatureEdit, apply_edits, bind_edits
from saelens_lite.lm.hooks import hook_widths, resolve_hooks
from saelens_lite.lm.splice import Edit, SpliceNodes, SpliceState, splice
from saelens_lite.lm.tokens import DEFAULT_EXCLUDE, excluded_token_ids


def as_sae_map(saes) -> dict[str, object]:
    """``{hook: sae}`` from one SAE, a sequence of SAEs (each at its ``cfg.hook_name``) or a
    mapping ``{hook: sae}``."""
    if saes is None:
        return {}
    if isinstance(saes, Mapping):
        return dict(saes)
    items = [saes] if hasattr(saes, "encode") else list(saes)
    out: dict[str, object] = {}
    for sae in items:
        hook = getattr(sae.cfg, "hook_name", "")
        if not hook:
            raise ValueError("an SAE has no cfg.hook_name: pass saes as {hook: sae}")
        if hook in out:
            raise ValueError(f"two SAEs for hook {hook!r}: splice at most one SAE per hook")
        out[hook] = sae
    return out


def check_saes(model, saes: Mapping[str, object]) -> None:
    """Every hook exists in ``model`` (UnknownHookError names the closest) and each SAE reads the
    hook's width."""
    resolve_hooks(model, list(saes))
    widths = hook_widths(model, list(saes))
    for hook, sae in saes.items():
        target = getattr(sae.cfg, "target_hook", "")
        if target:  # its reconstruction belongs at another hook than the one it reads
            raise ValueError(f"the SAE for {hook!r} is a transcoder ({sae.cfg.hook_name} -> {target}); "
                             "interventions splice SAEs that reconstruct their own hook, not "
                             "transcoders (not supported yet)")
        if sae.cfg.d_in != widths[hook]:
            raise ValueError(f"the SAE for {hook!r} reads d_in={sae.cfg.d_in} but the hook gives "
                             f"width {widths[hook]}: use an SAE trained on this model's {hook}")


@dataclass
class SAESplice:
    """What :func:`spliced` yields: the bound edits and the live splice (its recorded nodes)."""

    edits: list[BoundEdit]
    state: SpliceState

    @property
    def nodes(self) -> dict[str, SpliceNodes]:
        """record=True: the nodes of the last forward, by hook."""
        return self.state.nodes


def _code_edits(bound: list[BoundEdit], hooks) -> dict[str, Edit]:
    """{hook: (code_BSF, pos_BS) -> c'} for the hooks that have edits (``edits.apply_edits``)."""
    by_hook = {h: [b for b in bound if b.hook == h] for h in hooks}
    return {h: (lambda code_BSF, pos_BS, mine=mine: apply_edits(code_BSF, mine, pos_BS))
            for h, mine in by_hook.items() if mine}


@contextmanager
def spliced(lm, saes, edits: Sequence[FeatureEdit] = (), *, stats=None, keep_error: bool = True,
            exclude: str = DEFAULT_EXCLUDE, record: bool = False) -> Iterator[SAESplice]:
    """Within the block every forward of ``lm.model`` runs with ``saes`` spliced in
    (``lm.splice.splice``): ``x' = decode(edits(encode(x))) + (x - decode(encode(x)))``, the
    error term kept unless ``keep_error=False``; ``record=True`` keeps the code and error nodes of
    each forward for attribution (``.nodes``).

    ``lm``: a :class:`~saelens_lite.lm.load.LoadedModel`; ``saes``: an SAE, a list of SAEs (each
    at its ``cfg.hook_name``) or ``{hook: sae}``; ``edits``: :class:`FeatureEdit` objects
    (ablate, clamp, scale, add_direction), bound to the SAEs by :func:`bind_edits`; ``stats``:
    max activations for ``add`` (a ``FeatureStats``, an (F,) array or ``{feature: max}``, or
    ``{hook: ...}`` of those); ``exclude``: the special-token rule of ``saelens_lite.lm.tokens``.
    Hooks are removed on exit, also after an exception.
    """
    sae_map = as_sae_map(saes)
    if not sae_map:
        raise ValueError("spliced() needs at least one SAE")
    check_saes(lm.model, sae_map)
    bound = bind_edits(edits, sae_map, stats)
    with splice(lm.model, sae_map, excluded=excluded_token_ids(lm.tokenizer, exclude),
                keep_error=keep_error, record=record, edits=_code_edits(bound, sae_map)) as state:
        yield SAESplice(bound, state)


__all__ = ["spliced", "SAESplice", "SpliceNodes", "as_sae_map", "check_saes"]
