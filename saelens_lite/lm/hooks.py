"""Named hook points on HF transformers: one forward's capture with early stop, and replacement.

Names: ``capture`` (one forward, every position) and ``replace`` / ``replace_from`` /
``replace_mlp`` (an activation replaced by a function) are the hook-level primitives; running
the model over contexts for kept rows is ``lm.capture.capture_rows``, putting an SAE or a
transcoder in the model is a *splice* (``lm.splice``).

Uniform names, per block ``i`` (B batch, S sequence, D model width):

* ``blocks.{i}.hook_resid_pre``  (B,S,D): the residual stream entering block i (its input).
* ``blocks.{i}.hook_attn_out``   (B,S,D): the attention sub-layer output.
* ``blocks.{i}.hook_mlp_in``     (B,S,D): the MLP sub-layer input, after its norm (llama/qwen2/
  mistral ``post_attention_layernorm``, gpt2 ``ln_2``, gpt_neox ``post_attention_layernorm``;
  BERT: the input of ``intermediate``, i.e. the LayerNorm-ed attention block output). It is
  what a transcoder reads (Dunefsky et al. 2024): ``mlp_out = MLP(mlp_in)``.
* ``blocks.{i}.hook_mlp_out``    (B,S,D): the MLP sub-layer output.
* ``blocks.{i}.hook_resid_post`` (B,S,D): block i's output (= resid_pre of block i+1).

For pre-LN models (llama, mistral, qwen2, gpt2) ``resid_post = resid_pre + attn_out + mlp_out``;
gpt_neox with ``use_parallel_residual`` satisfies the same sum. BERT is post-LN: ``attn_out`` is
``attention.output.dense`` and ``mlp_out`` is ``output.dense``, both *before* the residual add
and LayerNorm, so the sum does not hold there and ``resid_post`` is LayerNorm-ed.

Any module path from ``model.named_modules()`` is also a hook point (its output).

A name with ``*`` or ``[0-3]`` is a pattern: ``*`` stands for any block number, a set for those
numbers, so ``blocks.*.hook_mlp_in`` names every block's MLP input and ``blocks.[0-3].hook_mlp_in``
the first four, in block order (:func:`expand_hook_pattern`).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saelens_lite.lm.layout import ATTN_PATHS, MLP_IN_OF, MLP_PATHS, block_list, find_sub, submodule

log = logging.getLogger(__name__)

UNIFORM_SUFFIXES = ("hook_resid_pre", "hook_attn_out", "hook_mlp_in", "hook_mlp_out",
                    "hook_resid_post")

@dataclass(frozen=True)
class HookPoint:
    name: str
    """``blocks.3.hook_resid_post`` or a raw module path."""
    module_path: str
    """Path in ``model.named_modules()``."""
    kind: str
    """"pre" (module input) or "post" (module output)."""
    layer: int | None
    """Block index, or None for raw modules outside the blocks."""


class UnknownHookError(ValueError):
    """A hook name is neither a uniform name nor a module path; names the closest valid ones."""


class _StopForward(Exception):
    """Raised by a capture hook once every requested hook has fired, to skip later layers."""


def _block_points(prefix: str, i: int, block: nn.Module) -> list[HookPoint]:
    """Block ``i``'s uniform hook points in depth order (resid_pre, attn_out, mlp_in, mlp_out,
    resid_post; those the block has)."""
    path = f"{prefix}.{i}"
    points = [HookPoint(f"blocks.{i}.hook_resid_pre", path, "pre", i)]
    attn = find_sub(block, ATTN_PATHS)
    if attn is not None:
        points.append(HookPoint(f"blocks.{i}.hook_attn_out", f"{path}.{attn}", "post", i))
    mlp = find_sub(block, MLP_PATHS)
    if mlp is not None:
        mlp_in = MLP_IN_OF.get(mlp, mlp)
        if submodule(block, mlp_in) is not None:
            points.append(HookPoint(f"blocks.{i}.hook_mlp_in", f"{path}.{mlp_in}", "pre", i))
        points.append(HookPoint(f"blocks.{i}.hook_mlp_out", f"{path}.{mlp}", "post", i))
    points.append(HookPoint(f"blocks.{i}.hook_resid_post", path, "post", i))
    return points


def list_hook_points(model: nn.Module) -> list[HookPoint]:
    """Uniform hook points in depth order: per block resid_pre, attn_out, mlp_in, mlp_out,
    resid_post."""
    prefix, blocks = block_list(model)
    return [p for i, block in enumerate(blocks) for p in _block_points(prefix, i, block)]


def hook_depth(name: str) -> tuple[int, int] | None:
    """(block, place in the block) of a uniform name, ordered as the forward reaches them
    (resid_pre, attn_out, mlp_in, mlp_out, resid_post); None for a raw module path (its place
    is not known from the name)."""
    m = re.fullmatch(r"blocks\.(\d+)\.(\w+)", name)
    if m is None or m.group(2) not in UNIFORM_SUFFIXES:
        return None
    return int(m.group(1)), UNIFORM_SUFFIXES.index(m.group(2))


_WILDCARD = re.compile(r"\*|\[([0-9,\- ]+)\]")
"""A pattern's number slot: ``*`` (any number) or ``[0-3,7]`` (these numbers)."""


def is_hook_pattern(name: str) -> bool:
    """Whether ``name`` is a pattern (:func:`expand_hook_pattern`) rather than one hook."""
    return _WILDCARD.search(name) is not None


def _number_set(spec: str, pattern: str) -> set[int]:
    """``"0-3,7"`` -> {0, 1, 2, 3, 7}."""
    out: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise UnknownHookError(f"hook pattern {pattern!r}: [{spec}] is not a set of block numbers "
                                   "(allowed: [3], [0-3], [0,2,5-7])")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def expand_hook_pattern(pattern: str, names: Sequence[str]) -> list[str]:
    """The names among ``names`` that ``pattern`` matches, in increasing order of the numbers
    they match. A number slot is ``*`` (any number: ``blocks.*.hook_mlp_in``, every block) or a
    set ``[0-3]`` / ``[0,2,5-7]`` (these blocks, each of which must exist). A name without a
    slot is returned as it is (its existence is checked where it is read). A pattern matching
    nothing, or a listed number without a hook, is a one-line error naming it."""
    slots = list(_WILDCARD.finditer(pattern))
    if not slots:
        return [pattern]
    sets = [None if m.group(0) == "*" else _number_set(m.group(1), pattern) for m in slots]
    parts = _WILDCARD.split(pattern)[::2]  # split keeps the set groups (None for '*'): drop them
    rx = re.compile("(\\d+)".join(re.escape(part) for part in parts))
    matched = [(tuple(int(g) for g in m.groups()), n) for n in names if (m := rx.fullmatch(n))]
    found = sorted((nums, n) for nums, n in matched if all(s is None or v in s for s, v in zip(sets, nums)))
    if not found:
        probe = _WILDCARD.sub("0", pattern)
        close = difflib.get_close_matches(probe, list(names), n=3, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else f"{len(names)} names, none close"
        raise UnknownHookError(f"hook pattern {pattern!r} matches no hook ('*' stands for a block "
                               f"number, [0-3] for some, e.g. blocks.*.hook_mlp_in; {hint})")
    for i, s in enumerate(sets):
        missing = sorted(s - {nums[i] for nums, _ in found}) if s is not None else []
        if missing:
            raise UnknownHookError(f"hook pattern {pattern!r}: no hook for number(s) {missing} (it "
                                   f"matches {found[0][1]} to {found[-1][1]})")
    return [n for _, n in found]


def resolve_hooks(model: nn.Module, names: Sequence[str]) -> list[HookPoint]:
    """Map names (uniform or raw module paths, or patterns: :func:`expand_hook_pattern`) to
    hook points, in the order given (a pattern's matches in block order). A plain name is looked
    up along its path (its block, or the module path); only patterns and unknown names list every
    hook point and module path, once per call."""
    prefix, blocks = block_list(model)
    layer_re = re.compile(rf"^{re.escape(prefix)}\.(\d+)(\.|$)")
    every: list[str] = []

    def every_name() -> list[str]:  # walks the module tree: patterns and error hints only
        if not every:
            every.extend([p.name for p in list_hook_points(model)] +
                         [n for n, _ in model.named_modules() if n])
        return every

    points = []
    for pattern in names:
        for name in expand_hook_pattern(pattern, every_name()) if is_hook_pattern(pattern) else [pattern]:
            depth = hook_depth(name)
            if depth is not None and depth[0] < len(blocks):
                point = next((p for p in _block_points(prefix, depth[0], blocks[depth[0]]) if p.name == name), None)
                if point is not None:
                    points.append(point)
                    continue
            if submodule(model, name) is not None:
                m = layer_re.match(name)
                points.append(HookPoint(name, name, "post", int(m.group(1)) if m else None))
                continue
            close = difflib.get_close_matches(name, every_name(), n=5, cutoff=0.5)
            hint = f"closest: {', '.join(close)}" if close else "no close names"
            raise UnknownHookError(
                f"unknown hook {name!r} ({hint}); list_hook_points(model) gives the uniform names"
            )
    return points


def _as_points(model: nn.Module, hooks: Sequence[HookPoint | str]) -> list[HookPoint]:
    names = [h for h in hooks if isinstance(h, str)]
    if not names:  # resolving walks every module: skip it for ready hook points
        return list(hooks)
    resolved = iter(resolve_hooks(model, names))
    return [next(resolved) if isinstance(h, str) else h for h in hooks]


def _hidden_from_pre(args: tuple, kwargs: dict) -> Tensor:
    if args and isinstance(args[0], Tensor):
        return args[0]
    return kwargs["hidden_states"]


def _tensor_from_post(output) -> Tensor:
    return output if isinstance(output, Tensor) else output[0]


def _register(module: nn.Module, point: HookPoint, fn: Callable[[Tensor], object]):
    """Register a hook calling fn(activation); fn's non-None return replaces the activation."""
    if point.kind == "pre":

        def pre_hook(_mod, args, kwargs):
            new = fn(_hidden_from_pre(args, kwargs))
            if new is None:
                return None
            if args and isinstance(args[0], Tensor):
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def post_hook(_mod, _args, output):
        new = fn(_tensor_from_post(output))
        if new is None:
            return None
        if isinstance(output, Tensor):
            return new
        rest = tuple(output[1:])
        return (new, *rest) if isinstance(output, tuple) else [new, *rest]

    return module.register_forward_hook(post_hook)


def capture(
    model: nn.Module,
    inputs: dict,
    hooks: Sequence[HookPoint | str],
    *,
    stop_early: bool = True,
) -> dict[str, Tensor]:
    """Run one forward of ``model(**inputs)`` and return {hook name: activation (B,S,D)}.

    With ``stop_early`` the forward is aborted as soon as every hook has fired, so blocks
    after the deepest hooked one never run. The returned tensors are ordinary (not inference)
    tensors, safe to use in autograd later.
    """
    points = _as_points(model, hooks)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items()}
    acts: dict[str, Tensor] = {}
    n_wanted = len({p.name for p in points})

    def make_fn(name: str):
        def fn(t: Tensor):
            acts[name] = t.detach()
            if stop_early and len(acts) == n_wanted:
                raise _StopForward

        return fn

    handles = [_register(model.get_submodule(p.module_path), p, make_fn(p.name)) for p in points]
    try:
        with torch.inference_mode():
            model(**inputs)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [p.name for p in points if p.name not in acts]
    if missing:
        raise RuntimeError(f"hooks did not fire during the forward: {missing}")
    # Cloning outside inference_mode turns inference tensors into normal ones.
    return {p.name: acts[p.name].clone() for p in points}


def hook_widths(model: nn.Module, hooks: Sequence[HookPoint | str]) -> dict[str, int]:
    """Last-dimension width per hook: hidden_size for uniform names, a tiny forward otherwise."""
    points = _as_points(model, hooks)
    uniform = {p.name for p in points if hook_depth(p.name) is not None and p.name != p.module_path}
    widths = {p.name: model.config.hidden_size for p in points if p.name in uniform}
    raw = [p for p in points if p.name not in uniform]
    if raw:
        dummy = {
            "input_ids": torch.zeros(1, 4, dtype=torch.long),
            "attention_mask": torch.ones(1, 4, dtype=torch.long),
        }
        acts = capture(model, dummy, raw)
        widths.update({name: t.shape[-1] for name, t in acts.items()})
    return {p.name: widths[p.name] for p in points}


@contextmanager
def replace(
    model: nn.Module, hook: HookPoint | str, fn: Callable[[Tensor], Tensor]
) -> Iterator[None]:
    """Within the block, every forward replaces the activation at ``hook`` with fn(activation):
    the primitive under a splice (``lm.splice``) and an ablation."""
    (point,) = _as_points(model, [hook])
    handle = _register(model.get_submodule(point.module_path), point, fn)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def replace_from(
    model: nn.Module, source: HookPoint | str, hook: HookPoint | str,
    fn: Callable[[Tensor, Tensor], Tensor],
) -> Iterator[None]:
    """Within the block, the activation at ``hook`` becomes ``fn(src, act)``: ``src`` the
    activation at ``source`` in the same forward (which must fire before ``hook``), ``act``
    the clean one at ``hook``. A transcoder from ``source`` to ``hook`` is spliced this way."""
    p_src, p_out = _as_points(model, [source, hook])
    seen: list[Tensor] = []

    def output(act: Tensor) -> Tensor:
        if not seen:
            raise RuntimeError(f"replace_from: {p_out.name} fired before {p_src.name}; the source "
                               "hook must come earlier in the forward")
        return fn(seen.pop(), act)

    handles = [_register(model.get_submodule(p_src.module_path), p_src, seen.append),
               _register(model.get_submodule(p_out.module_path), p_out, output)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def replace_mlp(
    model: nn.Module, layer: int, fn: Callable[[Tensor, Tensor], Tensor]
) -> contextlib.AbstractContextManager:
    """Within the block, block ``layer``'s MLP output becomes ``fn(mlp_in, mlp_out)``: the MLP
    replaced by a function of its own input (a transcoder, Dunefsky et al. 2024). The MLP
    itself still runs (``mlp_out`` is its clean output, for positions left unchanged); for
    BERT the MLP spans two modules (``intermediate`` -> ``output.dense``)."""
    return replace_from(model, f"blocks.{layer}.hook_mlp_in", f"blocks.{layer}.hook_mlp_out", fn)


def is_mlp_pair(source: str, hook: str) -> bool:
    """Whether ``source -> hook`` is one block's MLP input -> output (a transcoder that
    replaces the MLP)."""
    m = re.fullmatch(r"blocks\.(\d+)\.hook_mlp_in", source)
    return m is not None and hook == f"blocks.{m.group(1)}.hook_mlp_out"


def warn_if_other_hook(sae, hook: str, use: str = "read") -> None:
    """Log a warning when ``hook`` is not the one ``sae`` was trained on (``cfg.hook_name``):
    the widths can match by chance, and the features may then mean nothing there."""
    trained = getattr(sae.cfg, "hook_name", "") or ""
    if trained and hook != trained:
        log.warning("the SAE was trained on %s but is %s on %s: the widths match, the features may "
                    "mean nothing there", trained, use, hook)
