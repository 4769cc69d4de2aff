"""The per-layer transcoders of a replacement model: find them in a folder, check them against the
model, one per layer.

A transcoder here reads ``blocks.i.hook_mlp_in`` (``cfg.hook_name``) and reconstructs
``blocks.i.hook_mlp_out`` (``cfg.target_hook``) of the same block, so it can stand in for MLP i
(Dunefsky et al. 2024; Ameisen et al. 2025, "Circuit Tracing", sec. "Building a replacement
model"). ``saelens-lite train --hooks blocks.i.hook_mlp_in --target-hook blocks.i.hook_mlp_out``
writes such a folder (``cfg.json`` + ``sae.safetensors``) as ``OUT/blocks.i.hook_mlp_in``; a
``--transcoders DIR`` is any folder holding those folders (at any depth), one per layer.
"""

from __future__ import annotations

import copy
import pathlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from saelens_lite.lm.hooks import is_mlp_pair
from saelens_lite.saes import SAE

_MLP_IN = re.compile(r"blocks\.(\d+)\.hook_mlp_in")


@dataclass
class TranscoderSet:
    """Transcoders by layer, checked against one model."""

    by_layer: dict[int, SAE]
    """Layer i -> the transcoder replacing MLP i (eval mode, the model's device and dtype)."""
    n_layers: int
    """The model's number of blocks; layers missing from ``by_layer`` keep their MLP output as
    one error node per position (allowed only with ``require_all=False``)."""
    sources: dict[int, str] = field(default_factory=dict)
    """Layer -> where the transcoder came from (a folder), for the graph's metadata."""

    @property
    def layers(self) -> list[int]:
        return sorted(self.by_layer)


def find_transcoder_dirs(root: str | pathlib.Path) -> list[pathlib.Path]:
    """Every folder under ``root`` (``root`` included) that holds a ``cfg.json``, sorted."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise ValueError(f"--transcoders {str(root)!r} is not a folder")
    found = sorted(p.parent for p in root.rglob("cfg.json") if (p.parent / "sae.safetensors").exists())
    if not found:
        raise ValueError(f"--transcoders {str(root)!r} holds no transcoder folder (cfg.json + "
                         "sae.safetensors); train one per layer with saelens-lite train --hooks "
                         "blocks.i.hook_mlp_in --target-hook blocks.i.hook_mlp_out")
    return found


def transcoder_layer(sae: SAE, where: str) -> int:
    """The block whose MLP ``sae`` replaces; an error naming ``where`` and the hooks otherwise."""
    hook, target = sae.cfg.hook_name, sae.cfg.target_hook
    if not target:
        raise ValueError(f"{where}: an SAE of {hook or 'an unnamed hook'} (no target_hook), not a "
                         "transcoder; allowed: a transcoder blocks.i.hook_mlp_in -> blocks.i.hook_mlp_out")
    if not is_mlp_pair(hook, target):
        raise ValueError(f"{where}: transcoder {hook!r} -> {target!r} does not replace one block's "
                         "MLP; allowed: blocks.i.hook_mlp_in -> blocks.i.hook_mlp_out")
    return int(_MLP_IN.fullmatch(hook).group(1))


def check_transcoders(saes: Mapping[str, SAE], lm, *, require_all: bool = True) -> TranscoderSet:
    """{source name: transcoder} -> a TranscoderSet for ``lm`` (a LoadedModel), or a one-line
    error naming the bad value: not a transcoder of one MLP, a layer the model lacks, two for one
    layer, a width other than the model's, another ``cfg.model_name``, a token-mixing
    architecture, or (``require_all``) a layer without one."""
    cfg = lm.model.config
    n_layers, width = cfg.num_hidden_layers, cfg.hidden_size
    names = {lm.name, lm.source}
    by_layer: dict[int, SAE] = {}
    sources: dict[int, str] = {}
    for where, sae in saes.items():
        layer = transcoder_layer(sae, where)
        if not 0 <= layer < n_layers:
            raise ValueError(f"{where}: transcoder of layer {layer}, but {lm.name} has layers "
                             f"0..{n_layers - 1}")
        if layer in by_layer:
            raise ValueError(f"two transcoders for layer {layer}: {sources[layer]} and {where}; "
                             "give one per layer")
        if sae.cfg.d_in != width:
            raise ValueError(f"{where}: d_in={sae.cfg.d_in} but {lm.name} has width {width}")
        if sae.cfg.model_name and sae.cfg.model_name not in names:
            raise ValueError(f"{where}: trained on model_name={sae.cfg.model_name!r}, not "
                             f"{lm.name!r}; allowed: transcoders of the traced model")
        if not getattr(type(sae), "tokenwise", True):
            raise ValueError(f"{where}: a {sae.architecture} coder does not encode token by token")
        by_layer[layer], sources[layer] = sae, where
    missing = [i for i in range(n_layers) if i not in by_layer]
    if require_all and missing:
        raise ValueError(f"no transcoder for layer(s) {missing} of {lm.name} ({n_layers} layers); "
                         f"found layers {sorted(by_layer)}: give one per layer, or allow_missing "
                         "(--allow-missing-layers) to keep those MLP outputs as error nodes")
    param = next(lm.model.parameters())
    by_layer = {i: copy.deepcopy(by_layer[i]).to(device=param.device, dtype=param.dtype).eval() for i in sorted(by_layer)}
    for sae in by_layer.values():
        sae.requires_grad_(False)
    return TranscoderSet(by_layer, n_layers, {i: sources[i] for i in sorted(sources)})


def load_transcoders(root: str | pathlib.Path, lm, *, require_all: bool = True) -> TranscoderSet:
    """Load every transcoder folder under ``root`` and check the set against ``lm``."""
    saes = {str(p): SAE.load(p) for p in find_transcoder_dirs(root)}
    return check_transcoders(saes, lm, require_all=require_all)


__all__ = ["TranscoderSet", "check_transcoders", "find_transcoder_dirs", "load_transcoders",
           "transcoder_layer"]
