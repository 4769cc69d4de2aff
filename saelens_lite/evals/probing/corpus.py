"""An on-domain training corpus for the autoencoders that ``bench probing`` tests: the texts of the
probing datasets' **training** splits, never a text of any test split.

The probing scores are held-out: an autoencoder trained on this corpus has read the training
texts (without their labels, as an SAE trains without labels) and none of the test texts. The
split is :func:`~saelens_lite.evals.probing.data.split_indices` with the same ``max_examples``,
``test_fraction`` and ``seed`` as the probing run, so the two must be given the same values.

Three rules make the corpus safe and usable:

- **No test text.** A text held out by any selected dataset is dropped even where another
  dataset has it in its training split (the one-vs-rest sets ``114_nyc_borough_*`` share their
  texts, for example).
- **Each text once.** A text in several training splits is written once.
- **Shuffled.** The texts are written in a seeded random order (``seed``), so a harvest that
  stops after its first N tokens reads every dataset, not the first few.

The output is JSON lines, ``{"text": ...}`` per line, which ``saelens-lite harvest --dataset
FILE.jsonl`` reads (its default ``--text-column text``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from saelens_lite.evals.probing import data
from saelens_lite.util.atomic import atomic_open


def train_texts(names: list[str], *, max_examples: int, test_fraction: float, seed: int,
                data_dir: str | Path | None = None) -> tuple[list[str], dict]:
    """(texts, counts): every selected dataset's training-split texts, minus any text in a test
    split of a selected dataset, each once, in a seeded random order.

    counts: ``datasets``, ``train_texts`` (summed over datasets), ``dropped_in_a_test_split``,
    ``duplicates`` (further copies of a kept text) and ``texts`` (written)."""
    if not names:
        raise ValueError("give one or more dataset names")
    train: list[str] = []
    test: set[str] = set()
    for name in names:
        ds = data.load_dataset(name, data_dir)
        idx_train, idx_test = data.split_indices(ds.y_N, max_examples=max_examples, test_fraction=test_fraction,
                                                 seed=seed)
        train += [ds.texts[i] for i in idx_train]
        test.update(ds.texts[i] for i in idx_test)
    kept = [t for t in train if t not in test]
    unique = list(dict.fromkeys(kept))
    order = np.random.default_rng(seed).permutation(len(unique))
    counts = {"datasets": len(names), "train_texts": len(train), "dropped_in_a_test_split": len(train) - len(kept),
              "duplicates": len(kept) - len(unique), "texts": len(unique)}
    return [unique[i] for i in order], counts


def write_train_corpus(path: str | Path, names: list[str], *, max_examples: int, test_fraction: float, seed: int,
                       data_dir: str | Path | None = None) -> dict:
    """Write :func:`train_texts` to ``path`` as JSON lines (atomically: a failure leaves no file)
    and return its counts."""
    path = Path(path)
    if path.suffix != ".jsonl":
        raise ValueError(f"out={str(path)!r}: give a .jsonl file (harvest reads .jsonl, .txt and .parquet)")
    texts, counts = train_texts(names, max_examples=max_examples, test_fraction=test_fraction, seed=seed,
                                data_dir=data_dir)
    if not texts:
        raise ValueError(f"the training splits of {names} hold no text outside the test splits")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    return counts


__all__ = ["train_texts", "write_train_corpus"]
