"""The data of a comparison: images (digits / MNIST) or the rows and contexts of an activation
cache, split into train and test.

Shape legend: N examples, S sequence, D input width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class Dataset:
    """Train / test rows (N, D) with labels, and for activations the test contexts (N, S, D)."""

    kind: str  # "images" | "activations"
    x_train: torch.Tensor
    x_test: torch.Tensor
    y_test: np.ndarray
    seq_train: torch.Tensor | None = None
    seq_test: torch.Tensor | None = None
    x_anomaly: torch.Tensor | None = None
    image_side: int | None = None
    cache: object = None
    hook: str = ""
    name: str = ""


def load_images(name: str = "digits", *, held_out_class: int = 9, seed: int = 0) -> Dataset:
    """digits: scikit-learn's 8x8 digits (ships offline), pixels scaled to [0, 1]; mnist:
    torchvision's MNIST (downloads; needs torchvision and a connection). ``held_out_class`` is
    removed from training and serves as the anomaly set; 30% of the rest is the test set."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = d.data.astype(np.float32) / 16.0, d.target
    elif name == "mnist":  # code path only: not exercised offline
        from torchvision.datasets import MNIST

        ds = MNIST(str(Path.home() / ".cache" / "saelens_lite" / "mnist"), train=True, download=True)
        x, y = ds.data.numpy().reshape(len(ds), -1).astype(np.float32) / 255.0, ds.targets.numpy()
    else:
        raise ValueError(f"images={name!r}: choose digits or mnist")
    rng = np.random.default_rng(seed)
    normal = np.flatnonzero(y != held_out_class)
    rng.shuffle(normal)
    n_test = int(0.3 * len(normal))
    te, tr = normal[:n_test], normal[n_test:]
    t = torch.from_numpy
    return Dataset("images", t(x[tr]), t(x[te]), y[te], x_anomaly=t(x[y == held_out_class]),
                   image_side=math.isqrt(x.shape[1]), name=name)


def load_activations(path, hook: str | None = None, *, test_fraction: float = 0.1) -> Dataset:
    """Rows of one hook of an ActivationCache, split by context (the last ``test_fraction`` of
    contexts are the test set), plus the contexts rebuilt as (n_contexts, S, D) sequences from
    the cache's context / position ids (contexts with missing positions are dropped)."""
    from saelens_lite.cache import ActivationCache

    cache = path if isinstance(path, ActivationCache) else ActivationCache(path)
    hook = hook or cache.hook_names[0]
    acts = np.asarray(cache.activations(hook), dtype=np.float32)
    ctx, pos, tok = (np.asarray(a) for a in (cache.context_ids, cache.positions, cache.token_ids))
    order = np.lexsort((pos, ctx))
    ids, start, count = np.unique(ctx[order], return_index=True, return_counts=True)
    S = int(np.bincount(count).argmax())  # the usual context length after exclusions
    full = [(s, c) for s, c in zip(start, count)
            if c == S and np.all(np.diff(pos[order[s:s + S]]) == 1)]
    rows_CS = np.stack([order[s:s + S] for s, _ in full])  # row indices, one context per line
    n_test = max(1, int(test_fraction * len(rows_CS)))
    tr, te = rows_CS[:-n_test], rows_CS[-n_test:]
    t = torch.from_numpy
    return Dataset("activations", t(acts[tr.reshape(-1)]), t(acts[te.reshape(-1)]), tok[te.reshape(-1)],
                   seq_train=t(acts[tr]), seq_test=t(acts[te]), cache=cache, hook=hook,
                   name=str(cache.meta.get("model", "")))

