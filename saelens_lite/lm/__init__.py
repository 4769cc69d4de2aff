"""The language model, and the plumbing every higher package runs it through (written once):

* ``load``: loading (aliases, HF ids, local folders, GGUF files); ``names``: the aliases' names.
* ``layout``: where blocks, attention, MLP and the final norm live in each model family;
  ``is_causal_lm``.
* ``hooks``: named hook points; ``capture`` (one forward, every position) and ``replace`` /
  ``replace_from`` / ``replace_mlp`` (an activation replaced by a function).
* ``tokens``: the one token rule (which positions every stage leaves out).
* ``capture``: ``capture_rows``, contexts -> kept activation rows (harvest, streamed training
  data and held-out eval rows all read it).
* ``splice``: ``splice``, SAEs or transcoders in place of activations (error term optional,
  code edits, recorded nodes), and ``ablated`` (zero / mean ablation); evals and interventions
  both splice through it.

The functions ``hooks.capture`` and ``splice.splice`` are not re-exported here: their names
are those of the ``capture`` and ``splice`` modules. Imports nothing of saelens_lite above ``util``.

The names below load on first use (PEP 562): importing a light submodule (``tokens``,
``names``) does not import transformers, so the CLI builds its parser without it."""

from __future__ import annotations

import importlib

#: public name -> the submodule that defines it
_EXPORTS = {
    "capture_rows": "capture",
    "HookPoint": "hooks",
    "UnknownHookError": "hooks",
    "hook_widths": "hooks",
    "list_hook_points": "hooks",
    "resolve_hooks": "hooks",
    "LoadedModel": "load",
    "MissingDependencyError": "load",
    "cache_dir": "load",
    "is_causal_lm": "layout",
    "load_model": "load",
    "Site": "splice",
    "ablated": "splice",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
