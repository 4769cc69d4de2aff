"""Transcoder targets: the data side of training a sparse coder from one hook to another.

A transcoder (Dunefsky et al. 2024, "Transcoders find interpretable LLM feature circuits")
reads the MLP's input ``x = blocks.i.hook_mlp_in`` and is trained to reproduce the MLP's output
``y = blocks.i.hook_mlp_out`` of the same token (any sparse architecture)::

    y_hat_BD = decode(encode(x_BD)) [+ x_BD @ W_skip]     # skip: Paulo et al. 2025
    loss     = ||y_hat_BD - y_BD||^2 / ... + the architecture's sparsity / AuxK terms

EleutherAI sparsify's ``--transcode`` trains the same map from a module's input to its output.
Here the pair comes from two hooks of one data stream, so the rows always belong to the same
tokens: a cache stores every hook of a row together (its shuffle permutes rows, not hooks), an
array source checks that the hooks hold the same number of rows, and a model stream captures
both hooks in one forward.

Normalisation: inputs and targets get separate fixed scales, ``c_x`` with E||c_x x|| = sqrt(D)
and ``c_y`` with E||c_y y|| = sqrt(D), both from the init sample; the SAE trains on
``(c_x x, c_y y)`` and ``fold_input_scale_(c_x, target_scale=c_y)`` makes the saved coder map
raw ``x`` to raw ``y``.

Several pairs in one run: ``hooks`` and ``target_hook`` may be patterns, ``*`` standing for any
block number and ``[0-3]`` for some (``lm.hooks.expand_hook_pattern``), e.g.
``hooks=["blocks.*.hook_mlp_in"]``, ``target_hook="blocks.*.hook_mlp_out"``: every MLP's
transcoder from one model forward per batch. The i-th input (``hooks`` in order, each pattern's matches in block order) pairs with
the i-th target; each pair gets its own coder, scales and folder ``out_dir/<input hook>/``.
A plain ``target_hook`` is the one target of a single input.

This module names which hooks a run reads and checks the pairs (:func:`resolve`, a
:class:`Pairs`); the loop (``trainer``) reads each hook's target from it.

Shapes: B batch, D width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Pairs:
    """The hooks that get a coder and, for transcoders, the target of each."""

    inputs: list[str]
    """Hooks that get a sparse coder, in config order (patterns expanded)."""
    target_of: dict[str, str] = field(default_factory=dict)
    """Input hook -> the hook its transcoder reconstructs; empty for SAEs."""

    def target(self, hook: str) -> str:
        """``hook``'s target, or '' (an SAE: the target is the input)."""
        return self.target_of.get(hook, "")

    def with_targets(self, hooks: Sequence[str]) -> list[str]:
        """``hooks`` then their targets, each once: what a source must read to train them."""
        return list(dict.fromkeys([*hooks, *(self.target_of[h] for h in hooks if h in self.target_of)]))

    @property
    def data_hooks(self) -> list[str]:
        """Every hook the data must hold: the inputs, then the targets."""
        return self.with_targets(self.inputs)


def data_hooks(config) -> list[str]:
    """Hooks (or patterns) the data must hold: ``config.hooks``, then the target (transcoders)."""
    return list(config.hooks) + ([config.sae.target_hook] if config.sae.target_hook else [])


def _expand(field_name: str, pattern: str, names: Sequence[str]) -> list[str]:
    from saelens_lite.lm.hooks import expand_hook_pattern  # here: --help stays torch-free

    try:
        return expand_hook_pattern(pattern, names)
    except ValueError as e:
        raise ValueError(f"{field_name}={pattern!r}: {e}") from None


def resolve(config, names: Sequence[str]) -> Pairs:
    """The pairs of ``config`` over the hooks ``names`` of the data (or model): patterns
    expanded, the i-th input with the i-th target. One-line errors: a pattern matching no hook,
    a hook listed twice, unequal numbers of inputs and targets, a target that is its input or
    comes before it in the forward."""
    inputs = [n for h in config.hooks for n in _expand("hooks", h, names)] if config.hooks else list(names)
    twice = sorted({h for h in inputs if inputs.count(h) > 1})
    if twice:
        raise ValueError(f"hooks={config.hooks!r}: name {twice} more than once; each hook gets one coder")
    t = config.sae.target_hook
    if not t:
        return Pairs(inputs)
    outs = _expand("target_hook", t, names)
    if len(outs) != len(inputs):
        raise ValueError(f"target_hook={t!r}: {len(outs)} target(s) {_short(outs)} for {len(inputs)} input "
                         f"hook(s) {_short(inputs)} of hooks={config.hooks!r}; the i-th input pairs with "
                         "the i-th target, so give as many of each")
    for x, y in zip(inputs, outs):
        check_pair(x, y)
    return Pairs(inputs, dict(zip(inputs, outs)))


def check_pair(x_hook: str, y_hook: str) -> None:
    """A transcoder ``x_hook -> y_hook``: another hook, not before its input in the forward
    (known from uniform names only; ``lm.hooks.hook_depth``)."""
    from saelens_lite.lm.hooks import hook_depth  # here: --help stays torch-free

    if y_hook == x_hook:
        raise ValueError(f"target_hook={y_hook!r}: is the input hook itself; leave it empty to train "
                         "an SAE, or name another hook")
    dx, dy = hook_depth(x_hook), hook_depth(y_hook)
    if dx is not None and dy is not None and dy < dx:
        raise ValueError(f"target_hook={y_hook!r}: comes before its input hook {x_hook!r} in the forward; "
                         "a transcoder predicts a later hook from an earlier one (e.g. "
                         "blocks.3.hook_mlp_in -> blocks.3.hook_mlp_out)")


def _short(names: Sequence[str]) -> str:
    return str(list(names)) if len(names) <= 3 else f"[{names[0]!r}, ..., {names[-1]!r}]"


def check_config(config) -> None:
    """``target_hook`` / ``skip`` of a TrainConfig; errors name the field, value and the rule.
    Pairs that need the data's hook names (patterns) are checked by :func:`resolve`."""
    if not isinstance(config.sae.target_hook, str):
        raise ValueError(f"target_hook={config.sae.target_hook!r}: must be a hook name or '' (no target)")
    if not isinstance(config.sae.skip, bool):
        raise ValueError(f"skip={config.sae.skip!r}: must be true or false")
    if not config.sae.target_hook:
        if config.sae.skip:
            raise ValueError("skip=True: a skip connection belongs to a transcoder; set target_hook "
                             "(e.g. --hooks blocks.9.hook_mlp_in --target-hook blocks.9.hook_mlp_out)")
        return
    from saelens_lite.lm.hooks import is_hook_pattern  # here: --help stays torch-free

    patterns = any(is_hook_pattern(h) for h in [*config.hooks, config.sae.target_hook])
    if not config.hooks or (not patterns and len(config.hooks) != 1):
        raise ValueError(f"target_hook={config.sae.target_hook!r}: a transcoder reads exactly one input "
                         f"hook; got hooks={config.hooks!r} (give one, e.g. blocks.9.hook_mlp_in, or "
                         "patterns for several pairs, e.g. blocks.*.hook_mlp_in -> blocks.*.hook_mlp_out)")
    if not patterns:
        check_pair(config.hooks[0], config.sae.target_hook)
    from saelens_lite.saes import REGISTRY  # here, not at the top: --help stays torch-free

    cls = REGISTRY.get(config.sae.architecture)
    if cls is not None and not cls.supports_transcoder:
        raise ValueError(f"target_hook={config.sae.target_hook!r}: architecture={config.sae.architecture!r} "
                         "cannot be a transcoder; choose one of "
                         f"{sorted(n for n, c in REGISTRY.items() if c.supports_transcoder)}")
    if cls is not None and config.fast_step == "on" and not cls.fast_step_supports(_fast_step_options(config)):
        raise ValueError(f"fast_step='on': the fast step does not train transcoders "
                         f"(target_hook={config.sae.target_hook!r}); use 'auto' or 'off'")


def check_widths(pairs: Pairs, widths: Mapping[str, int]) -> None:
    """Before selecting the hooks from the data: each pair's hooks present, equal widths."""
    for x_hook, y_hook in pairs.target_of.items():
        missing = [h for h in (x_hook, y_hook) if h not in widths]
        if missing:
            raise ValueError(f"transcoder {x_hook} -> {y_hook}: the data lacks {missing} (it holds "
                             f"{sorted(widths)}); harvest both hooks into the same cache, e.g. "
                             f"--hooks {x_hook} {y_hook}")
        if widths[x_hook] != widths[y_hook]:
            raise ValueError(f"transcoder {x_hook} -> {y_hook}: widths {widths[x_hook]} and "
                             f"{widths[y_hook]} differ; the transcoder maps D to the same D")


def check_row_counts(config, counts: Mapping[str, int]) -> None:
    """Arrays given per hook: each input and its target must hold the same tokens (same N)."""
    if not config.sae.target_hook:
        return
    for x_hook, y_hook in resolve(config, list(counts)).target_of.items():
        if x_hook in counts and y_hook in counts and counts[x_hook] != counts[y_hook]:
            raise ValueError(f"transcoder {x_hook} -> {y_hook}: {counts[x_hook]} rows of {x_hook} but "
                             f"{counts[y_hook]} of {y_hook}; the input and target rows must be the "
                             "same tokens")


def _fast_step_options(config) -> dict:
    """The SAEConfig fields the fast step is asked about (``SAE.fast_step_supports``)."""
    return vars(config.sae)


def fast_step_applies(config, sae) -> bool:
    """Whether the fast step may train ``sae``: the class decides from its SAEConfig fields,
    target included (transcoders are declined today and fall back to the autograd step: the
    same loss, only slower on CUDA)."""
    return not config.sae.target_hook or type(sae).fast_step_supports(_fast_step_options(config))


def describe(config, hook: str, target: str) -> str:
    """``transcoder A -> B (skip)`` or ``SAE``, for logs."""
    if not target:
        return "SAE"
    return f"transcoder {hook} -> {target}" + (" with skip" if config.sae.skip else "")


__all__ = ["Pairs", "data_hooks", "resolve", "check_pair", "check_config", "check_widths",
           "check_row_counts", "fast_step_applies", "describe"]
