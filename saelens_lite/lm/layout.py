"""Where things live inside an HF transformer: the one table of module paths per layout.

Read by :mod:`saelens_lite.lm.hooks` (the uniform hook names) and by the logit views of
:mod:`saelens_lite.features.logits` (the final norm folded into the unembedding). An unknown
layout falls back to a search (the first ModuleList as long as the layer count; the last norm
outside the blocks). Also :func:`is_causal_lm`, the one test of "causal LM with a head" (it
imports transformers only when called).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

#: Where the block list lives, for LM-head models and their base models.
BLOCK_LIST_PATHS = (
    "model.layers",  # llama, mistral, qwen2, gemma, ...
    "transformer.h",  # gpt2, gpt-j, bloom, falcon
    "gpt_neox.layers",
    "bert.encoder.layer",
    "roberta.encoder.layer",
    "encoder.layer",  # BertModel / RobertaModel
    "model.decoder.layers",  # opt
    "layers",  # LlamaModel, GPTNeoXModel
    "h",  # GPT2Model
)
#: Sub-layer paths inside a block, first match wins. BERT's come first because its
#: ``attention`` is a wrapper whose output already includes the residual and LayerNorm.
ATTN_PATHS = ("attention.output.dense", "self_attn", "attn", "attention", "self_attention")
MLP_PATHS = ("output.dense", "mlp", "feed_forward", "ffn")
#: The module whose *input* is the MLP's input, keyed by the mlp_out path found above; the MLP
#: is one module except in BERT, where it is ``intermediate`` (dense + act) then ``output.dense``.
MLP_IN_OF = {"output.dense": "intermediate"}
#: The norm applied to the last block's output before the unembedding.
FINAL_NORM_PATHS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm",
                    "model.final_layernorm", "model.decoder.final_layer_norm", "transformer.norm_f",
                    "backbone.norm_f")


def submodule(module: nn.Module, path: str) -> nn.Module | None:
    """The sub-module at ``path`` (dotted, as ``named_modules`` spells it), or None (also for
    ''); ``nn.Module.get_submodule`` follows the path without walking the whole tree."""
    if not path:
        return None
    try:
        return module.get_submodule(path)
    except AttributeError:  # no such attribute, or one that is not a module
        return None


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(path, blocks): the model's list of transformer blocks."""
    for path in BLOCK_LIST_PATHS:
        if isinstance(found := submodule(model, path), nn.ModuleList):
            return path, found
    # Unknown layout: the first ModuleList as long as the config's layer count.
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for path, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n_layers:
            return path, mod
    raise ValueError(f"cannot find the transformer blocks of {type(model).__name__}")


def find_sub(block: nn.Module, candidates: Sequence[str]) -> str | None:
    """The first of ``candidates`` that is a sub-module path of ``block`` (None if none is)."""
    return next((c for c in candidates if submodule(block, c) is not None), None)


def final_norm(model: nn.Module) -> nn.Module | None:
    """The final norm before the unembedding, or None when the model has none."""
    mods = dict(model.named_modules())
    for name in FINAL_NORM_PATHS:
        if name in mods:
            return mods[name]
    # Fallback: the last norm module outside the repeated blocks.
    found = [m for n, m in mods.items() if "norm" in type(m).__name__.lower()
             and not any(p.isdigit() for p in n.split("."))]
    return found[-1] if found else None


def is_causal_lm(model_or_config) -> bool:
    """Whether a model (or, before loading, its config) is a causal LM with a language-model head:
    the one test that picks the loader, the spliced-model loss (CE/KL vs pooled cosine) and
    the dashboards' logit views. A model: an LM-head class (``*ForCausalLM``, ``*LMHeadModel``)
    with its output embeddings; a config: its recorded architectures, else its model type."""
    import transformers  # here, not at import: a model or config given means it is loaded

    if isinstance(model_or_config, transformers.PretrainedConfig):
        return _config_is_causal(model_or_config)
    get = getattr(model_or_config, "get_output_embeddings", None)
    head = get() if get is not None else None
    return head is not None and type(model_or_config).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def _config_is_causal(config) -> bool:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    archs = getattr(config, "architectures", None) or []
    if archs:
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    # No architectures recorded: BERT-likes also have a causal variant, so exclude MLM types.
    return (
        config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


__all__ = ["BLOCK_LIST_PATHS", "ATTN_PATHS", "MLP_PATHS", "MLP_IN_OF", "FINAL_NORM_PATHS", "block_list",
           "find_sub", "final_norm", "is_causal_lm", "submodule"]
