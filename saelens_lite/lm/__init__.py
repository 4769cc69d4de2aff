"""The language model, and the plumbing every higher package runs it through (written once):

* ``load``: loading (aliases, HF ids, local folders, GGUF files); ``is_causal_lm``.
* ``layout``: where blocks, attention, MLP and the final norm live in each model family.
* ``hooks``: named hook points; ``capture`` (one forward, every position) and ``replace`` /
  ``replace_from`` / ``replace_mlp`` (an activation replaced by a function).
* ``tokens``: the one token rule (which positions every stage leaves out).
* ``capture``: ``capture_rows``, contexts -> kept activation rows (harvest, streamed training
  data and held-out eval rows all read it).
* ``splice``: ``splice``, SAEs or transcoders in place of activations (error term optional,
  code edits, recorded nodes), and ``ablated`` (zero / mean ablation); evals and interventions
  both splice through it.

The functions ``hooks.capture`` and ``splice.splice`` are not re-exported here: their names
are those of the ``capture`` and ``splice`` modules. Imports nothing of saelens_lite above ``util``."""

from saelens_lite.lm.capture import capture_rows
from saelens_lite.lm.hooks import (
    HookPoint,
    UnknownHookError,
    hook_widths,
    list_hook_points,
    resolve_hooks,
)
from saelens_lite.lm.load import (
    LoadedModel,
    MissingDependencyError,
    cache_dir,
    is_causal_lm,
    load_model,
)
from saelens_lite.lm.splice import Site, ablated

__all__ = ["HookPoint", "LoadedModel", "MissingDependencyError", "Site", "UnknownHookError", "ablated",
           "cache_dir", "capture_rows", "hook_widths", "is_causal_lm", "list_hook_points", "load_model",
           "resolve_hooks"]
