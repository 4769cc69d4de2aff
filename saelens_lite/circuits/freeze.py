"""Freeze attention patterns and normalisation denominators, so that the residual stream is
linear in what is written into it (Ameisen et al. 2025, "Circuit Tracing", sec. "Attribution
graphs": "we freeze the attention patterns and normalization denominators").

Shape legend: B batch, S sequence, D model width.

Attention: ``pattern = softmax(Q K^T / sqrt(d) + mask)`` with ``Q = q_proj(h)``, ``K = k_proj(h)``.
Detaching the outputs of ``q_proj`` and ``k_proj`` makes the pattern a constant for autograd
(rotary embeddings and any q/k norm come after the projections), while ``V = v_proj(h)`` and
``o_proj`` keep their gradient: ``attn_out = o_proj(pattern @ V)`` is then linear in ``h``.

Norms: RMSNorm ``y = w * x * r(x)``, ``r = 1 / sqrt(mean(x^2) + eps)``, becomes ``w * x * r0``
with ``r0 = r(x)`` detached; LayerNorm ``y = w * (x - mean x) * r(x) + b`` keeps its (linear)
centring and freezes ``r0 = 1 / sqrt(var(x) + eps)``. The forward values are unchanged (checked:
a norm whose output is not this formula, e.g. Gemma's ``(1 + w)``, is refused by name).

Everything goes through ``saelens_lite.lm.hooks.replace`` on raw module paths.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from saelens_lite.lm.hooks import HookPoint, replace


def norm_kind(module: nn.Module) -> str | None:
    """"rms", "layer" or None (not a normalisation layer)."""
    if isinstance(module, nn.LayerNorm):
        return "layer"
    if type(module).__name__.endswith("RMSNorm"):
        return "rms"
    return None


def _eps(module: nn.Module) -> float:
    for name in ("variance_epsilon", "eps"):
        if isinstance(getattr(module, name, None), float):
            return getattr(module, name)
    raise ValueError(f"cannot freeze {type(module).__name__}: no eps attribute (variance_epsilon, eps)")


def norm_scale(module: nn.Module, kind: str, x_BSD: Tensor) -> Tensor:
    """r(x) (B, S, 1), detached: the denominator that freezing holds fixed."""
    x = _compute(x_BSD).detach()
    if kind == "layer":
        x = x - x.mean(-1, keepdim=True)
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + _eps(module))


def _compute(x_BSD: Tensor) -> Tensor:
    """In float32 as HF's norms are, or in float64 for a float64 input (so that the map is
    linear to float64 precision; the forward then differs from HF's by float32 rounding)."""
    return x_BSD if x_BSD.dtype == torch.float64 else x_BSD.float()


def frozen_norm(module: nn.Module, kind: str, x_BSD: Tensor, r0: Tensor | None = None) -> Tensor:
    """The norm of ``x`` with its denominator detached (module docstring), or held at ``r0``
    (e.g. a clean run's, to freeze it in a forward pass with other inputs)."""
    x = _compute(x_BSD)
    if kind == "layer":
        x = x - x.mean(-1, keepdim=True)
    y = (x * (norm_scale(module, kind, x_BSD) if r0 is None else r0)).to(x_BSD.dtype)
    if getattr(module, "weight", None) is not None:
        y = module.weight * y
    if getattr(module, "bias", None) is not None:
        y = y + module.bias
    return y


def norm_modules(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Path -> (module, kind) of every normalisation layer."""
    return {path: (m, norm_kind(m)) for path, m in model.named_modules() if path and norm_kind(m)}


def qk_paths(model: nn.Module) -> list[str]:
    """The q_proj / k_proj modules (their outputs decide the attention patterns); an error naming
    the family when there are none."""
    qk = [p for p, _ in model.named_modules() if p.endswith((".q_proj", ".k_proj"))]
    if not qk:
        family = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ValueError(f"cannot freeze the attention of model family {family!r}: no q_proj / "
                         "k_proj modules; allowed: llama-style attention (llama, mistral, qwen2, ...)")
    return qk


def _check_same(path: str, module: nn.Module, new: Tensor, old: Tensor) -> None:
    tol = 1e-5 if old.dtype in (torch.float32, torch.float64) else 1e-2
    if not torch.allclose(new.detach(), old.detach(), rtol=tol, atol=tol):
        diff = float((new.detach() - old.detach()).abs().max())
        raise ValueError(f"cannot freeze norm {path} ({type(module).__name__}): its output is not "
                         f"w * x / rms(x) (+ b) (max difference {diff:.3g}); unsupported norm")


def _freeze_norm(stack: contextlib.ExitStack, model: nn.Module, path: str, module: nn.Module,
                 kind: str) -> None:
    seen: list[Tensor] = []
    stack.enter_context(replace(model, HookPoint(f"{path}:in", path, "pre", None), seen.append))

    def output(y: Tensor) -> Tensor:
        new = frozen_norm(module, kind, seen.pop())
        _check_same(path, module, new, y)
        return new

    stack.enter_context(replace(model, HookPoint(path, path, "post", None), output))


@contextlib.contextmanager
def frozen_attention_and_norms(model: nn.Module) -> Iterator[None]:
    """Within the block, every attention pattern and norm denominator of ``model`` is a constant
    for autograd (forward values unchanged). Refuses models whose attention has no separate
    ``q_proj`` / ``k_proj`` (e.g. GPT-2's fused ``c_attn``), naming the family."""
    with contextlib.ExitStack() as stack:
        for path in qk_paths(model):
            stack.enter_context(replace(model, HookPoint(path, path, "post", None), Tensor.detach))
        for path, (module, kind) in norm_modules(model).items():
            _freeze_norm(stack, model, path, module, kind)
        yield


__all__ = ["frozen_attention_and_norms", "frozen_norm", "norm_kind", "norm_modules", "norm_scale",
           "qk_paths"]
