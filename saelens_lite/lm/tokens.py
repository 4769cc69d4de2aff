"""The one token-exclusion rule: which token positions every stage leaves out.

Harvesting (rows written to a cache), the reconstruction metrics (rows scored), the
spliced-model losses (positions kept clean and out of the means) and interventions all read
:func:`excluded_token_ids`, so "special" means the same set everywhere:

* ``special`` (default): BOS (CLS for BERT-style tokenizers), EOS, pad and SEP, the
  ``ignore_tokens = {bos, eos, pad}`` of SAEBench core (``exclude_special_tokens_from_reconstruction``)
  plus BERT's SEP. SAELens's ``evals.py`` leaves out the same positions. Their activations are
  unlike any text token's (BOS is an attention sink with a norm up to ~100x the median).
* ``bos``: only the BOS (or CLS) token.
* ``none``: nothing.

The rule goes by token id at every position (a BOS in mid-context is left out too), so it
gives the same answer on a cache's stored token ids as on the model's input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

import numpy as np
import torch

Exclude = Literal["special", "bos", "none"]
"""The token rule's choices (module docstring)."""
EXCLUDE_CHOICES = get_args(Exclude)
DEFAULT_EXCLUDE = "special"


def _ids_of(tokenizer) -> dict[str, int | None]:
    if isinstance(tokenizer, Mapping):  # a cache manifest's tokenizer record
        get = tokenizer.get
    else:
        def get(name):
            return getattr(tokenizer, name, None)
    return {name: get(f"{name}_token_id") for name in ("bos", "cls", "eos", "pad", "sep")}


def check_exclude(exclude: str) -> str:
    if exclude not in EXCLUDE_CHOICES:
        raise ValueError(f"exclude={exclude!r}: choose one of {list(EXCLUDE_CHOICES)}")
    return exclude


def excluded_token_ids(tokenizer, exclude: str = DEFAULT_EXCLUDE) -> set[int]:
    """Token ids left out under ``exclude``. ``tokenizer``: a HF tokenizer, or a mapping with
    ``bos_token_id`` / ``eos_token_id`` / ... keys (a cache manifest's ``meta["tokenizer"]``)."""
    check_exclude(exclude)
    if exclude == "none":
        return set()
    ids = _ids_of(tokenizer)
    bos = ids["bos"] if ids["bos"] is not None else ids["cls"]
    out = {bos}
    if exclude == "special":
        out |= {ids["eos"], ids["pad"], ids["sep"]}
    return {int(i) for i in out if i is not None}


def keep_mask(ids, excluded: set[int]):
    """True where the token id is not excluded; ``ids`` a tensor (any shape) or a numpy array."""
    if isinstance(ids, torch.Tensor):
        if not excluded:
            return torch.ones_like(ids, dtype=torch.bool)
        return ~torch.isin(ids, torch.tensor(sorted(excluded), dtype=ids.dtype, device=ids.device))
    ids = np.asarray(ids)
    return ~np.isin(ids, np.array(sorted(excluded), dtype=ids.dtype if ids.size else np.int64))



def written_mask(ids_BS, attn_BS, exclude: str, tokenizer):
    """Boolean (B, S): positions whose activations are written (attended and not excluded)."""
    return attn_BS.bool() & keep_mask(ids_BS, excluded_token_ids(tokenizer, exclude))


__all__ = ["EXCLUDE_CHOICES", "DEFAULT_EXCLUDE", "check_exclude", "excluded_token_ids", "keep_mask",
           "written_mask"]
