"""Splice: run the model with coders (SAEs, transcoders) in place of its activations.

Names, one per concept: a *splice* (:func:`splice`) puts a coder's reconstruction in place of
an activation; an *ablation* (:func:`ablated`) puts zeros or a mean vector there; both sit on
the hook-level primitives ``hooks.replace`` / ``hooks.replace_from`` (any function of the
activation). Evaluation (``evals.downstream``: CE / KL loss recovered, zero and mean ablation)
and interventions (``interventions.spliced``: generation, attribution, effects) splice through
here. Reading activations out of the model is a *capture* (``lm.capture``).

A coder is any object with ``encode(x_ND) -> code_NF`` and ``decode(code_NF) -> x_hat_ND``
(:class:`Coder`; nothing of ``saelens_lite.saes`` is imported); one with
``add_skip(x_ND, dec_ND)`` (a transcoder's linear skip, Paulo et al. 2025) gets it added. A
:class:`Site` names the hook a coder reads and the hook it writes: the same hook for an SAE; an
MLP's input and output for a transcoder, which so replaces the MLP (Dunefsky et al. 2024).

At every site, at each position whose token is kept (the rule of ``lm.tokens``; excluded
tokens and padding keep their clean activation), with x the read and y the written activation::

    c = encode(x),   c' = edit(c),   y_hat = decode(c) (+ x W_skip)
    y' = decode(c') (+ x W_skip) + (y - y_hat)   keep_error=True (SAELens ``use_error_term``;
                                                  Marks et al. 2024's error nodes)
    y' = decode(c') (+ x W_skip)                 keep_error=False (SAEBench's spliced CE loss)

With no edit and the error kept, ``y' = y`` up to float rounding; an edit moves the activation by
exactly ``decode(c') - decode(c)``. Positions are counted in each row's unpadded sequence (from
the attention mask, else the KV cache's length), so an edit hits the same tokens under left
padding and across cached generation steps, where a forward sees only the new positions.

With ``record=True`` each forward keeps, per site, the code and the error as autograd leaves
(attribution patching, Syed et al. 2023): ``y' = decode(c'_leaf) + e_leaf + (y - stopgrad(y))``;
the last term is 0 in value and passes the gradient to y unchanged, so upstream gradients are
the clean model's (the feature-circuits code's ``x.grad = x_recon.grad``).

Shapes: B batch, S sequence (this forward's positions), D width, F features, N = B S.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import torch
from torch import Tensor, nn

from saelens_lite.lm.hooks import replace, replace_from
from saelens_lite.lm.tokens import keep_mask


class Coder(Protocol):
    """What a splice needs of an SAE or a transcoder."""

    def encode(self, x_ND: Tensor) -> Tensor: ...

    def decode(self, code_NF: Tensor) -> Tensor: ...


Edit = Callable[[Tensor, Tensor], Tensor]
"""(code_BSF, pos_BS) -> the edited code c'; ``pos_BS`` the positions in each unpadded row."""


@dataclass(frozen=True)
class Site:
    """One coder in the model: it reads ``read`` and replaces ``write`` (an SAE: the same hook)."""

    coder: Coder
    read: str
    write: str = ""
    """'' for the hook it reads; a transcoder: its target (``blocks.i.hook_mlp_out``)."""

    @property
    def target(self) -> str:
        return self.write or self.read


def sites_of(coders: Mapping[str, Coder]) -> list[Site]:
    """One site per ``{hook: coder}``: it writes the coder's ``cfg.target_hook`` (a transcoder)
    when it has one, else the hook it reads."""
    return [Site(c, hook, getattr(getattr(c, "cfg", None), "target_hook", "") or "") for hook, c in coders.items()]


class SpliceNodes(NamedTuple):
    """One site's nodes from the last recorded forward."""

    code_BSF: Tensor
    """The (edited) code c', an autograd leaf."""
    error_BSD: Tensor
    """e = y - y_hat, an autograd leaf."""
    keep_BS: Tensor
    """bool: positions where the coder was spliced (others kept their clean activation)."""


@dataclass
class Positions:
    """Per forward (a pre-hook on the whole model): which positions it covers and which to keep."""

    excluded: set[int]
    keep_BS: Tensor | None = None
    pos_BS: Tensor | None = None

    def before_forward(self, _module, args, kwargs) -> None:
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

    def keep_for(self, act_BSD: Tensor, hook: str) -> Tensor:
        if self.keep_BS is None or self.keep_BS.shape != act_BSD.shape[:2]:
            raise RuntimeError(f"hook {hook!r} got an activation of shape {tuple(act_BSD.shape)}; "
                               "spliced SAEs expect (B, S, D) from a forward of the model itself")
        return self.keep_BS

    @contextmanager
    def tracking(self, model: nn.Module) -> Iterator[None]:
        handle = model.register_forward_pre_hook(self.before_forward, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()


def _coder_dtype(coder) -> torch.dtype:
    W_dec = getattr(coder, "W_dec", None)
    return W_dec.dtype if isinstance(W_dec, Tensor) else torch.float32


def _reconstruct(coder, x_ND: Tensor, code_BSF: Tensor, shape: torch.Size) -> Tensor:
    """decode(c) (+ the skip term x W_skip of a transcoder that has one), reshaped to ``shape``."""
    dec_ND = coder.decode(code_BSF.reshape(-1, code_BSF.shape[-1]))
    add_skip = getattr(coder, "add_skip", None)
    return (add_skip(x_ND, dec_ND) if add_skip is not None else dec_ND).reshape(shape)


def _check_width(site: Site, D: int) -> None:
    d_in = getattr(getattr(site.coder, "cfg", None), "d_in", None)
    if d_in is not None and d_in != D:
        raise ValueError(f"the SAE for {site.read!r} reads width d_in={d_in} but the hook gives {D}")


@dataclass
class SpliceState:
    """The live state of :func:`splice`: what every hooked forward reads and records."""

    sites: list[Site]
    positions: Positions
    keep_error: bool = True
    record: bool = False
    edits: Mapping[str, Edit] = field(default_factory=dict)
    """{read hook: edit}; sites without one are not edited."""
    nodes: dict[str, SpliceNodes] = field(default_factory=dict)
    """record=True: the nodes of the last forward, by read hook."""

    def replacement(self, site: Site) -> Callable[[Tensor, Tensor], Tensor]:
        """(act_BSD at site.target, src_BSD at site.read) -> the spliced activation."""
        coder, edit = site.coder, self.edits.get(site.read)

        def fn(act_BSD: Tensor, src_BSD: Tensor) -> Tensor:
            keep_BS = self.positions.keep_for(act_BSD, site.target)
            _check_width(site, src_BSD.shape[-1])
            x_ND = src_BSD.detach().reshape(-1, src_BSD.shape[-1]).to(_coder_dtype(coder))
            y_BSD = act_BSD.detach().to(x_ND.dtype)
            with torch.no_grad():
                code_BSF = coder.encode(x_ND).reshape(*act_BSD.shape[:2], -1)
                y_hat_BSD = _reconstruct(coder, x_ND, code_BSF, act_BSD.shape)
                new_BSF = edit(code_BSF, self.positions.pos_BS) if edit else code_BSF
                if not self.record:
                    out = _reconstruct(coder, x_ND, new_BSF, act_BSD.shape) if edit else y_hat_BSD
                    out = out + (y_BSD - y_hat_BSD) if self.keep_error else out
                    return torch.where(keep_BS[..., None], out.to(act_BSD.dtype), act_BSD)
            code_leaf, err_leaf = new_BSF.requires_grad_(), (y_BSD - y_hat_BSD).requires_grad_()
            self.nodes[site.read] = SpliceNodes(code_leaf, err_leaf, keep_BS)
            out = _reconstruct(coder, x_ND, code_leaf, act_BSD.shape) + err_leaf
            return torch.where(keep_BS[..., None], out.to(act_BSD.dtype) + (act_BSD - act_BSD.detach()), act_BSD)

        return fn


def _hook_site(model: nn.Module, site: Site, fn: Callable[[Tensor, Tensor], Tensor]):
    if site.target == site.read:
        return replace(model, site.read, lambda act: fn(act, act))
    return replace_from(model, site.read, site.target, lambda src, act: fn(act, src))


@contextmanager
def splice(model: nn.Module, sites: Sequence[Site] | Mapping[str, Coder], *, excluded: Collection[int] = (),
           keep_error: bool = True, record: bool = False,
           edits: Mapping[str, Edit] | None = None) -> Iterator[SpliceState]:
    """Within the block every forward of ``model`` runs with the coders of ``sites`` (or
    ``{hook: coder}``, see :func:`sites_of`) spliced in (module docstring). ``excluded``: token
    ids that keep their clean activation (``lm.tokens.excluded_token_ids``); ``edits``: {read
    hook: edit of the code}. Hooks are removed on exit, also after an exception."""
    sites = sites_of(sites) if isinstance(sites, Mapping) else list(sites)
    if record and not keep_error:
        raise ValueError("record=True needs keep_error=True: the error term is one of the nodes")
    state = SpliceState(sites, Positions(set(excluded)), keep_error, record, dict(edits or {}))
    with ExitStack() as stack:
        stack.enter_context(state.positions.tracking(model))
        for site in sites:
            stack.enter_context(_hook_site(model, site, state.replacement(site)))
        yield state


@contextmanager
def ablated(model: nn.Module, hook: str, mean_D: Tensor | None = None, *,
            excluded: Collection[int] = ()) -> Iterator[None]:
    """Within the block the activation at ``hook`` is zero at every position (``mean_D`` None;
    SAEBench's zero ablation ignores the token rule) or ``mean_D`` at the kept positions (mean
    ablation; excluded tokens keep their clean activation)."""
    if mean_D is None:
        with replace(model, hook, torch.zeros_like):
            yield
        return
    positions = Positions(set(excluded))

    def fn(act_BSD: Tensor) -> Tensor:
        keep_BS = positions.keep_for(act_BSD, hook)
        return torch.where(keep_BS[..., None], mean_D.to(act_BSD).expand_as(act_BSD), act_BSD)

    with positions.tracking(model), replace(model, hook, fn):
        yield


__all__ = ["Coder", "Edit", "Site", "SpliceNodes", "SpliceState", "Positions", "sites_of", "splice", "ablated"]
