"""The local replacement model on one prompt: one forward in which every MLP output is a transcoder's reconstruction plus a constant error, with attention patterns and norm
denominators frozen, so the residual stream is linear in the graph's sources.

Shape legend: B batch (1: the prompt), S sequence, D model width, F features.

Per layer l and position s (Ameisen et al. 2025, "Circuit Tracing", "local replacement model"):

    a_l      = transcoder_l.encode(mlp_in_l)                  (fixed: computed once, no gradient)
    mlp_out_l = sum_f a_lf W_dec[f] + b_dec + e_l  +  mlp_in_l @ W_skip     (skip: if any)
    e_l       = MLP_l(mlp_in_l) - transcoder_l(mlp_in_l)       (the error node, a constant)

so ``mlp_out_l`` equals the real MLP's output and the forward reproduces the model exactly. For
autograd the constant part ``L_l = sum_f a_lf W_dec[f] + b_dec + e_l`` is a leaf tensor (B, S, D):
the gradient of a target with respect to ``L_l[b, s]``, dotted with ``a_lf W_dec[f]``, ``e_l[s]``
or ``b_dec``, is that source's direct effect on the target (the MLP's non-linearity is cut: the
gradient never passes from ``mlp_out`` back to ``mlp_in`` except through the linear skip, as in
circuit-tracer). The token embeddings (``blocks.0.hook_resid_pre``) are a leaf too. Targets read
``mlp_in_l`` (a feature's pre-activation is ``(mlp_in_l - b_pre) . W_enc[:, f] + b_enc[f]``) and
the final norm's output (the unembedding's input). Layers without a transcoder keep their whole
MLP output as the error (``a_l = 0``, no ``b_dec``, no skip).

Backward passes for many targets at once are batched vector-Jacobian products over this one
forward (``circuits.attribution``).

Model-running functions used, all from ``saelens_lite.lm.hooks``: ``replace`` (the embedding
leaf, the unembedding input, via ``HookPoint``), ``replace_mlp`` (the MLP outputs), and through
``circuits.freeze`` ``replace`` on raw module paths.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from saelens_lite.circuits.freeze import frozen_attention_and_norms
from saelens_lite.circuits.transcoders import TranscoderSet
from saelens_lite.lm.hooks import HookPoint, replace, replace_mlp


@dataclass
class ReplacementRun:
    """What one forward of the replacement model leaves for the backward passes."""

    emb_BSD: Tensor
    """Leaf: the token embeddings (block 0's input)."""
    leaves: dict[int, Tensor] = field(default_factory=dict)
    """Layer -> leaf (B, S, D): the constant part of the MLP output (features + b_dec + error)."""
    mlp_in: dict[int, Tensor] = field(default_factory=dict)
    """Layer -> (B, S, D) MLP input, in the autograd graph (features' targets read it)."""
    unembed_in_BSD: Tensor | None = None
    """The final norm's output, the unembedding's input, in the autograd graph (logit targets)."""
    acts_SF: dict[int, Tensor] = field(default_factory=dict)
    """Layer -> (S, F) feature activations (zero at excluded positions); transcoder layers only."""
    errors_LSD: list[Tensor] = field(default_factory=list)
    """Per layer (S, D): the error node e_l (the whole MLP output where there is no transcoder)."""
    logits_V: Tensor | None = None
    """The clean logits at the last position (row 0), float64."""

    @property
    def emb_SD(self) -> Tensor:
        return self.emb_BSD[0].detach()


@contextlib.contextmanager
def _no_param_grad(model: nn.Module) -> Iterator[None]:
    """Parameters need no gradient here (only activations do): the graph stays small."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _module_path(model: nn.Module, module: nn.Module) -> str:
    return next(path for path, m in model.named_modules() if m is module)


def _mlp_fn(run: ReplacementRun, tcs: TranscoderSet, layer: int, keep_S: Tensor):
    tc = tcs.by_layer.get(layer)

    def fn(mlp_in_BSD: Tensor, mlp_out_BSD: Tensor) -> Tensor:
        run.mlp_in[layer] = mlp_in_BSD
        x_SD, y_SD = mlp_in_BSD[0].detach(), mlp_out_BSD[0].detach()
        if tc is None:
            skip_BSD = torch.zeros_like(mlp_out_BSD)
            run.errors_LSD.append(y_SD.clone())
        else:
            skip_BSD = tc.add_skip(mlp_in_BSD, torch.zeros_like(mlp_in_BSD))
            with torch.no_grad():
                acts_SF = tc.encode(x_SD) * keep_S[:, None]
                recon_SD = tc.add_skip(x_SD, tc.decode(acts_SF))
            run.acts_SF[layer] = acts_SF
            run.errors_LSD.append(y_SD - recon_SD)
        leaf = (mlp_out_BSD - skip_BSD).detach().clone().requires_grad_(True)
        run.leaves[layer] = leaf
        return leaf + skip_BSD

    return fn


def replacement_forward(lm, tcs: TranscoderSet, ids_S: Tensor, keep_S: Tensor) -> ReplacementRun:
    """Run the local replacement model on ``ids_S`` (module docstring);
    the run's tensors hold the autograd graph for the backward passes."""
    model = lm.model
    head = model.get_output_embeddings()
    head_path = _module_path(model, head)
    run = ReplacementRun(emb_BSD=torch.empty(0))

    def emb_fn(x_BSD: Tensor) -> Tensor:
        run.emb_BSD = x_BSD.detach().clone().requires_grad_(True)
        return run.emb_BSD

    def head_fn(h_BSD: Tensor) -> None:
        run.unembed_in_BSD = h_BSD

    kwargs = {}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1
    with contextlib.ExitStack() as stack:
        stack.enter_context(_no_param_grad(model))
        stack.enter_context(frozen_attention_and_norms(model))
        stack.enter_context(replace(model, "blocks.0.hook_resid_pre", emb_fn))
        stack.enter_context(replace(model, HookPoint("unembed_in", head_path, "pre", None), head_fn))
        for layer in range(tcs.n_layers):
            stack.enter_context(replace_mlp(model, layer, _mlp_fn(run, tcs, layer, keep_S)))
        stack.enter_context(torch.enable_grad())
        ids_BS = ids_S.to(run_device(model))[None]
        logits = model(input_ids=ids_BS, **kwargs).logits
        run.logits_V = logits[0, -1].detach().double()
    return run


def run_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


__all__ = ["ReplacementRun", "replacement_forward"]
