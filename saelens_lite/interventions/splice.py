"""Run a model with SAEs spliced in at their hooks, keeping the SAE's error as a term of its own.

Shape legend: B batch, S sequence (the positions of this forward), D model width, F features.

At every spliced hook, for each position whose token is not excluded (``saelens_lite.lm.tokens``:
BOS / EOS / pad keep their clean activation, the rule of ``evals.splice``)::

    c  = encode(x),   c' = edits(c),   e = x - decode(c)        (the error node)
    x' = decode(c') + e      keep_error=True (default; SAELens HookedSAETransformer's
                             ``use_error_term``, Marks et al. 2024's error nodes)
    x' = decode(c')          keep_error=False (the CE-loss splice of ``evals.splice``)

With no edit and the error kept, ``x' = x`` up to float rounding, so the model's output is the
clean model's; an edit moves the activation by exactly ``decode(c') - decode(c)``
(``(c' - c) @ W_dec``). Positions are counted in each row's unpadded sequence, so the same
edit hits the same tokens under left padding and across KV-cached generation steps, where
each forward sees only the new positions.

With ``record=True`` each forward keeps, per hook, the code and the error as autograd leaves
(attribution patching needs the gradient of a metric with respect to both, Syed et al. 2023):
``x' = decode(c'_leaf) + e_leaf + (x - stopgrad(x))``; the last term is 0 in value and passes
the gradient to x unchanged, so upstream gradients are the clean model's (the feature-circuits
code's ``x.grad = x_recon.grad``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from saelens_lite.interventions.edits import BoundEdit, FeatureEdit, apply_edits, bind_edits
from saelens_lite.lm.hooks import hook_widths, resolve_hooks, splice
from saelens_lite.lm.tokens import DEFAULT_EXCLUDE, excluded_token_ids, keep_mask


class SpliceNodes(NamedTuple):
    """One hook's nodes from the last recorded forward."""

    code_BSF: Tensor
    """The (edited) code c', an autograd leaf."""
    error_BSD: Tensor
    """e = x - decode(c), an autograd leaf."""
    keep_BS: Tensor
    """bool: positions where the SAE was spliced (others kept their clean activation)."""


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
    """The live state of :func:`spliced`: what every hooked forward reads and records."""

    saes: dict[str, object]
    edits: list[BoundEdit]
    keep_error: bool = True
    record: bool = False
    excluded: set[int] = field(default_factory=set)
    nodes: dict[str, SpliceNodes] = field(default_factory=dict)
    """record=True: the nodes of the last forward, by hook."""
    keep_BS: Tensor | None = None
    pos_BS: Tensor | None = None

    def _before_forward(self, _module, args, kwargs) -> None:
        """Top-level pre-hook: which positions this forward covers and which tokens to keep."""
        ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], Tensor) else None)
        ref = ids if ids is not None else kwargs["inputs_embeds"][..., 0]
        B, S = ref.shape[:2]
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            self.pos_BS = (mask.long().cumsum(-1) - 1).clamp_min(0)[:, -S:]
            keep = mask[:, -S:].bool()
        else:
            past = kwargs.get("cache", kwargs.get("past_key_values"))
            start = past.get_seq_length() if past is not None and hasattr(past, "get_seq_length") else 0
            self.pos_BS = torch.arange(start, start + S, device=ref.device).expand(B, S)
            keep = torch.ones(B, S, dtype=torch.bool, device=ref.device)
        self.keep_BS = keep if ids is None else keep & keep_mask(ids, self.excluded)

    def hook_fn(self, hook: str):
        sae = self.saes[hook]
        edits = [b for b in self.edits if b.hook == hook]

        def fn(x_BSD: Tensor) -> Tensor:
            keep_BS = self.keep_BS
            if keep_BS is None or keep_BS.shape != x_BSD.shape[:2]:
                raise RuntimeError(f"hook {hook!r} got an activation of shape {tuple(x_BSD.shape)}; "
                                   "spliced SAEs expect (B, S, D) from a forward of the model itself")
            dt = x_BSD.dtype
            x = x_BSD.detach().to(sae.W_dec.dtype)
            with torch.no_grad():
                code = sae.encode(x)
                x_hat = sae.decode(code)
                new_code = apply_edits(code, edits, self.pos_BS) if edits else code
                if not self.record:
                    out = (sae.decode(new_code) if edits else x_hat)
                    if self.keep_error:
                        out = out + (x - x_hat)
                    return torch.where(keep_BS[..., None], out.to(dt), x_BSD)
            code_leaf = new_code.requires_grad_()
            err_leaf = (x - x_hat).requires_grad_()
            self.nodes[hook] = SpliceNodes(code_leaf, err_leaf, keep_BS)
            out = (sae.decode(code_leaf) + err_leaf).to(dt) + (x_BSD - x_BSD.detach())
            return torch.where(keep_BS[..., None], out, x_BSD)

        return fn


@contextmanager
def spliced(lm, saes, edits: Sequence[FeatureEdit] = (), *, stats=None, keep_error: bool = True,
            exclude: str = DEFAULT_EXCLUDE, record: bool = False) -> Iterator[SAESplice]:
    """Within the block every forward of ``lm.model`` runs with ``saes`` spliced in (module
    docstring): ``x' = decode(edits(encode(x))) + (x - decode(encode(x)))``, the error term kept
    unless ``keep_error=False``.

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
    if record and not keep_error:
        raise ValueError("record=True needs keep_error=True: the error term is one of the nodes")
    check_saes(lm.model, sae_map)
    state = SAESplice(sae_map, bind_edits(edits, sae_map, stats), keep_error, record,
                      excluded_token_ids(lm.tokenizer, exclude))
    with ExitStack() as stack:
        handle = lm.model.register_forward_pre_hook(state._before_forward, with_kwargs=True)
        stack.callback(handle.remove)
        for hook in sae_map:
            stack.enter_context(splice(lm.model, hook, state.hook_fn(hook)))
        yield state


__all__ = ["spliced", "SAESplice", "SpliceNodes", "as_sae_map", "check_saes"]
