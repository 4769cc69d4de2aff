"""Builders shared by the tests (``import helpers``: tests/ holds conftest.py and no
``__init__.py``, so pytest puts tests/ on the path). One home for what many test files build:
small SAEs and transcoders with non-trivial weights, a tiny attribution graph, activation
caches written from arrays, and a data source that dies mid-run (a crash to resume from).

Shape legend: N rows (tokens), D width, F latents.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from saelens_lite.cache import CacheWriter
from saelens_lite.saes import SAE, SAEConfig
from saelens_lite.saes.config import config_class
from saelens_lite.training import ArraySource

REPO = Path(__file__).resolve().parents[1]
SLOW_FIXTURES = {"smollm2"}  # requesting one of these makes a test slow (tests/conftest.py)


class NotMarkedSlow(RuntimeError):
    """A test not marked ``slow`` started a process or loaded the real SmolLM2."""


def make_sae(architecture: str = "topk", *, seed: int = 0, bias_std: float = 0.1,
             w_enc_noise: float = 0.0, spread_w_dec: bool = False, device: str = "cpu",
             **config) -> SAE:
    """``SAE.from_config(SAEConfig.build(architecture=..., **config))`` seeded with ``seed``, then, in
    this order (so a test's random stream is fixed): ``b_enc`` and ``b_dec`` drawn from
    N(0, bias_std) (skipped when 0: every term of the math then counts), ``W_enc`` plus
    ``w_enc_noise`` x N(0, 1), and with ``spread_w_dec`` each decoder row scaled by U(0.5, 1.5)
    (decoder norms that differ). Returned in training mode on ``device``. Rows start at unit
    norm unless ``decoder_init_norm`` is given (the k-sparse SAEs' training default starts free
    rows at 0.1; these are random SAEs at the scale of a trained one)."""
    torch.manual_seed(seed)
    if "decoder_init_norm" in config_class(architecture).__dataclass_fields__:
        config.setdefault("decoder_init_norm", 1.0)
    sae = SAE.from_config(SAEConfig.build(architecture=architecture, **config))
    with torch.no_grad():
        if bias_std:
            sae.b_enc.normal_(0, bias_std)
            sae.b_dec.normal_(0, bias_std)
        if w_enc_noise:
            sae.W_enc.add_(w_enc_noise * torch.randn_like(sae.W_enc))
        if spread_w_dec:
            sae.W_dec.mul_(torch.rand(sae.W_dec.shape[0], 1) + 0.5)
    return sae.to(device)


def make_transcoder(layer: int, *, d_in: int = 64, d_sae: int = 48, k: int = 3, skip: bool = False,
                    seed: int = 0, model_name: str = "tiny-llama", dtype: str = "float32",
                    hook: str | None = None) -> SAE:
    """A TopK transcoder of MLP ``layer`` with random (seeded) weights and biases."""
    cfg = SAEConfig.build(architecture="topk", d_in=d_in, d_sae=d_sae, k=k, skip=skip, dtype=dtype,
                    hook_name=hook or f"blocks.{layer}.hook_mlp_in",
                    target_hook=f"blocks.{layer}.hook_mlp_out", model_name=model_name)
    gen = torch.Generator().manual_seed(1000 * seed + layer)
    sae = SAE.from_config(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * (0.1 if p.ndim == 2 and
                                                                           p.shape[0] == p.shape[1] else 1.0))
    return sae


def tiny_graph(lm, layers=range(4), prompt: str = "abc ab", target: str = "b", slug: str = "abc") -> dict:
    """The pruned attribution graph's JSON (``circuits.export``) of ``prompt`` on tiny-llama
    ``lm`` through :func:`make_transcoder`'s transcoders of ``layers``."""
    from saelens_lite.circuits import check_transcoders
    from saelens_lite.circuits.trace import TraceConfig, trace

    tcs = check_transcoders({f"tc{i}": make_transcoder(i) for i in layers}, lm,
                            require_all=len(layers) == lm.model.config.num_hidden_layers)
    result = trace(lm, tcs, prompt, TraceConfig(target=target, node_threshold=0.9))
    return result.to_json(lm.tokenizer, slug=slug)


def write_cache(path: Path, acts: dict[str, np.ndarray], *, context_size: int = 10,
                shard_tokens: int = 256, meta: dict | None = None,
                token_ids: np.ndarray | None = None, dtype: str = "float32") -> Path:
    """A finished activation cache at ``path`` holding ``acts`` (hook -> (N, D) array, the same
    N for every hook) as consecutive contexts of ``context_size`` tokens (row i: context
    i // context_size, position i % context_size), token ids 0 unless given."""
    n = len(next(iter(acts.values())))
    hooks = {h: a.shape[1] for h, a in acts.items()}
    w = CacheWriter.open(path, meta=meta or {}, hooks=hooks, dtype=dtype, shard_tokens=shard_tokens)
    w.append(acts, token_ids=np.zeros(n, np.int64) if token_ids is None else token_ids,
             context_idx=np.arange(n) // context_size, position=np.arange(n) % context_size)
    w.finalize()
    return Path(path)


class DiesAfter(ArraySource):
    """An ArraySource that raises KeyboardInterrupt at batch ``limit``: a run interrupted after
    its checkpoints (resume it from the same arrays)."""

    limit = 25

    def batches(self, batch_size, *, seed, start_batch=0, reuse=0):
        for i, batch in enumerate(super().batches(batch_size, seed=seed, start_batch=start_batch)):
            if start_batch + i >= self.limit:
                raise KeyboardInterrupt("killed")
            yield batch


def python_with(check: str, env_var: str = "SAELENS_LITE_PEERS_PYTHON") -> str | None:
    """An interpreter for which ``python -c check`` exits 0: ``$env_var`` alone when it is set,
    else the first of .venv-peers, /work/peers-venv and this interpreter; None if none does."""
    def ok(python: str) -> bool:
        try:
            return subprocess.run([python, "-c", check], capture_output=True, timeout=60).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    env = os.environ.get(env_var)
    cands = [env] if env else [str(REPO / ".venv-peers" / "bin" / "python"), "/work/peers-venv/bin/python",
                               sys.executable]
    return next((c for c in cands if Path(c).exists() and ok(c)), None)


def peers_required() -> bool:
    """Whether a missing peer environment fails instead of skipping: under CI (CI=true, as CI
    services set it) and under `make test` (SAELENS_LITE_REQUIRE_PEERS=1). A developer running
    pytest by hand without `.venv-peers` gets skips."""
    return (os.environ.get("CI", "").lower() in ("true", "1")
            or os.environ.get("SAELENS_LITE_REQUIRE_PEERS", "") not in ("", "0"))


def no_peers(reason: str) -> None:
    """Skip the oracle tests, or fail them where the peers are required."""
    if peers_required():
        pytest.fail(f"{reason} (required here: CI=true or SAELENS_LITE_REQUIRE_PEERS=1)", pytrace=False)
    pytest.skip(reason)


LONGEST_FILES = (
    "tests/test_readme.py",
    "tests/evals/test_synthsae.py",
    "tests/training/test_distributed.py",
    "tests/explain/test_explain_judge.py",
    "tests/saes/test_pruned_topk.py",
    "tests/kernels/test_bench_kernels.py",
    "tests/explain/test_explain.py",
    "tests/interventions/test_interventions_smollm2.py",
    "tests/corpus/test_corpus.py",
    "tests/evals/test_evals_smollm2.py",
)
"""The files that took longest on one worker (session 18: 132, 126, 59, 52, 45, 36, 31, 30, 29
and 28 s of 943 s), collected first. ``make test`` hands whole files to its workers in
collection order (pytest-xdist ``--dist loadfile --no-loadscope-reorder``; xdist's own order,
most tests first, put test_readme.py's 3 tests near the end, so one worker ran its ~2 minutes
while the other had nothing left). Longest first leaves the short files to fill in."""
