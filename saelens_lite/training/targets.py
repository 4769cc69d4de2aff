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

This module names which hooks a run reads and checks the pair; the loop (``trainer``) reads
``config.sae.target_hook``.

Shapes: B batch, D width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def data_hooks(config) -> list[str]:
    """Hooks the data must hold: ``config.hooks``, then the target (transcoders)."""
    return list(config.hooks) + ([config.sae.target_hook] if config.sae.target_hook else [])


def input_hooks(config, hooks: Sequence[str]) -> list[str]:
    """The hooks among ``hooks`` that get a sparse coder (the target is only read)."""
    return [h for h in hooks if h != config.sae.target_hook]


def with_target(config, hooks: Sequence[str]) -> list[str]:
    """``hooks`` plus the target when training transcoders (what a rank's source must read)."""
    return list(hooks) + ([config.sae.target_hook] if config.sae.target_hook and hooks else [])


def check_config(config) -> None:
    """``target_hook`` / ``skip`` of a TrainConfig; errors name the field, value and the rule."""
    if not isinstance(config.sae.target_hook, str):
        raise ValueError(f"target_hook={config.sae.target_hook!r}: must be a hook name or '' (no target)")
    if not isinstance(config.sae.skip, bool):
        raise ValueError(f"skip={config.sae.skip!r}: must be true or false")
    if not config.sae.target_hook:
        if config.sae.skip:
            raise ValueError("skip=True: a skip connection belongs to a transcoder; set target_hook "
                             "(e.g. --hooks blocks.9.hook_mlp_in --target-hook blocks.9.hook_mlp_out)")
        return
    if len(config.hooks) != 1:
        raise ValueError(f"target_hook={config.sae.target_hook!r}: a transcoder reads exactly one input "
                         f"hook; got hooks={config.hooks!r} (give one, e.g. blocks.9.hook_mlp_in)")
    if config.sae.target_hook == config.hooks[0]:
        raise ValueError(f"target_hook={config.sae.target_hook!r}: is the input hook itself; leave it "
                         "empty to train an SAE, or name another hook")
    from saelens_lite.saes import REGISTRY  # here, not at the top: --help stays torch-free

    cls = REGISTRY.get(config.sae.architecture)
    if cls is not None and not cls.supports_transcoder:
        raise ValueError(f"target_hook={config.sae.target_hook!r}: architecture={config.sae.architecture!r} "
                         "cannot be a transcoder; choose one of "
                         f"{sorted(n for n, c in REGISTRY.items() if c.supports_transcoder)}")
    if cls is not None and config.fast_step == "on" and not cls.fast_step_supports(_fast_step_options(config)):
        raise ValueError(f"fast_step='on': the fast step does not train transcoders "
                         f"(target_hook={config.sae.target_hook!r}); use 'auto' or 'off'")


def check_widths(config, widths: Mapping[str, int]) -> None:
    """Before selecting the hooks from the data: both hooks present, equal widths."""
    if not config.sae.target_hook:
        return
    (x_hook,), y_hook = config.hooks, config.sae.target_hook
    missing = [h for h in (x_hook, y_hook) if h not in widths]
    if missing:
        raise ValueError(f"transcoder {x_hook} -> {y_hook}: the data lacks {missing} (it holds "
                         f"{sorted(widths)}); harvest both hooks into the same cache, e.g. "
                         f"--hooks {x_hook} {y_hook}")
    if widths[x_hook] != widths[y_hook]:
        raise ValueError(f"transcoder {x_hook} -> {y_hook}: widths {widths[x_hook]} and "
                         f"{widths[y_hook]} differ; the transcoder maps D to the same D")


def check_row_counts(config, counts: Mapping[str, int]) -> None:
    """Arrays given per hook: the input and target must hold the same tokens (same N)."""
    if not config.sae.target_hook:
        return
    (x_hook,), y_hook = config.hooks, config.sae.target_hook
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


def describe(config) -> str:
    """``transcoder A -> B (skip)`` or ``SAE``, for logs."""
    if not config.sae.target_hook:
        return "SAE"
    return f"transcoder {config.hooks[0]} -> {config.sae.target_hook}" + (" with skip" if config.sae.skip else "")


__all__ = ["data_hooks", "input_hooks", "with_target", "check_config", "check_widths",
           "check_row_counts", "fast_step_applies", "describe"]
