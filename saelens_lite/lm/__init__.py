"""The language model: loading (``load``: aliases, HF ids, local folders, GGUF files), named hook
points (``hooks``), the one token rule (``tokens``), running the model and capturing hooks, and
splicing an SAE or a transcoder in. Imports nothing of saelens_lite above ``util``."""

from saelens_lite.lm.hooks import (
    HookPoint,
    UnknownHookError,
    capture,
    hook_widths,
    list_hook_points,
    resolve_hooks,
)
from saelens_lite.lm.load import LoadedModel, MissingDependencyError, cache_dir, load_model

__all__ = ["HookPoint", "LoadedModel", "MissingDependencyError", "UnknownHookError", "cache_dir",
           "capture", "hook_widths", "list_hook_points", "load_model", "resolve_hooks"]
