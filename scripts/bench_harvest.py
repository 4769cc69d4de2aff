"""Harvest throughput against its floor, in one process on one model.

Prints tokens/s of
  1. a full forward of the model (to the logits),
  2. a forward truncated right after the hooked block (a copy of the model whose block list is
     cut there, with no final norm or head): the floor for any harvester of that hook,
  3. ``saelens_lite.cache.harvest`` writing the hook's activations to a fresh cache on disk
     (tokenisation, packing, forward with early stop, shard writes and checksums included),
and the ratios harvest/truncated (target >= 0.9) and harvest/full (target >= 1.7 for
blocks.14.hook_resid_post of SmolLM2, whose 30 blocks are cut after the 15th).

Usage: python scripts/bench_harvest.py [--model smollm2-135m] [--hook blocks.14.hook_resid_post]
       [--tokens 16384] [--context-size 128] [--batch-size 16] [--device auto]
"""

from __future__ import annotations

import argparse
import copy
import re
import tempfile
import time

import numpy as np
import torch

from saelens_lite.cache.harvest import HarvestConfig, harvest
from saelens_lite.corpus.text import iter_documents, pack_contexts
from saelens_lite.lm.hooks import resolve_hooks
from saelens_lite.lm.load import load_model
from saelens_lite.util.devices import resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _batches(contexts: list[np.ndarray], batch_size: int, device: torch.device) -> list[dict]:
    out = []
    for i in range(0, len(contexts), batch_size):
        ids = torch.as_tensor(np.stack(contexts[i:i + batch_size]), dtype=torch.long, device=device)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def _time_forward(fn, batches: list[dict], device: torch.device) -> float:
    with torch.inference_mode():
        fn(**batches[0])  # warm-up
        _sync(device)
        t = time.perf_counter()
        for b in batches:
            fn(**b)
        _sync(device)
    return time.perf_counter() - t


def _truncated(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """The model's base transformer with its block list cut after ``layer``, no final norm."""
    base = copy.copy(model.get_base_model() if hasattr(model, "get_base_model") else getattr(model, "model", model))
    for attr in ("layers", "h"):
        if hasattr(base, attr):
            base._modules = dict(base._modules)
            base._modules[attr] = getattr(base, attr)[: layer + 1]
    if hasattr(base, "norm"):
        base._modules["norm"] = torch.nn.Identity()
    return base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--hook", default="blocks.14.hook_resid_post")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--context-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", help="cache storage dtype")
    args = ap.parse_args()

    device = resolve_device(args.device)
    model_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lm = load_model(args.model, device=device, dtype=model_dtype)
    (hook,) = resolve_hooks(lm.model, [args.hook])
    layer = int(re.match(r"blocks\.(\d+)\.", hook.name).group(1))  # uniform names only

    n_ctx = -(-args.tokens // (args.context_size - 1))
    docs = iter_documents("builtin:pydocs")
    contexts = []
    for ids in pack_contexts(docs, lm.tokenizer, args.context_size):
        if len(ids) == args.context_size:
            contexts.append(ids)
        if len(contexts) == n_ctx:
            break
    batches = _batches(contexts, args.batch_size, device)
    tokens_fwd = len(contexts) * args.context_size

    t_full = _time_forward(lm.model, batches, device)
    t_trunc = _time_forward(_truncated(lm.model, layer), batches, device)

    cfg = HarvestConfig(model=args.model, hooks=[args.hook], tokens=args.tokens, context_size=args.context_size,
                        batch_size=args.batch_size, device=str(device), dtype=args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        warm = HarvestConfig(**{**cfg.__dict__, "tokens": args.batch_size * (args.context_size - 1)})
        harvest(warm, f"{tmp}/warm", model=lm, progress=False)
        _sync(device)
        t = time.perf_counter()
        cache = harvest(cfg, f"{tmp}/cache", model=lm, progress=False)
        _sync(device)
        t_harvest = time.perf_counter() - t
        n_harvest = cache.n_tokens

    full = tokens_fwd / t_full
    trunc = tokens_fwd / t_trunc
    # Conservative: harvest is credited with the rows it wrote (BOS positions are run but not
    # written), the forwards with every position they ran.
    harv = n_harvest / t_harvest
    print(f"device={device} model={args.model} hook={args.hook} contexts={len(contexts)}x{args.context_size} "
          f"batch={args.batch_size} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'full forward':32s} {full:10.0f} tok/s")
    print(f"{'truncated forward (floor)':32s} {trunc:10.0f} tok/s")
    print(f"{'saelens_lite harvest to disk':32s} {harv:10.0f} tok/s  ({n_harvest} rows written)")
    print(f"ratio harvest/truncated = {harv / trunc:.2f}  (target >= 0.9)")
    print(f"ratio harvest/full      = {harv / full:.2f}  (target >= 1.7 for blocks.14 of SmolLM2)")


if __name__ == "__main__":
    main()
