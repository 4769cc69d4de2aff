"""The labelled datasets of SAE-Probes (Kantamneni et al. 2025, "Are Sparse Autoencoders Useful?
A Case Study in Sparse Probing"): find them, read one, and split it.

The ``sae-probes`` wheel (MIT; ``pip install --no-deps sae-probes``) ships 155 datasets of real
text as ``sae_probes/data/cleaned_data/{number}_{tag}.csv.zst`` with columns ``prompt`` (the
text) and ``target`` (the label). The package itself is never imported (it imports
transformer_lens); only its data folder is read. Any folder of ``NAME.csv`` / ``NAME.csv.zst``
files with the same two columns works too (the tests write two small ones).

**Which datasets are probed.** A dataset is *binary* when its ``target`` column holds exactly
two distinct values; those are the paper's 113 "Binary Classification" sets (the multiclass
sets are also shipped one-vs-rest, e.g. ``114_nyc_borough_Manhattan``). Multiclass and numeric
targets (``15_us_population``, ``2_hist_fig_birthyear``) are **skipped**, not binarised, as the
paper's probing experiments use only the binary sets. The label is the target's rank among its
two sorted values (sklearn's ``LabelEncoder``, as ``sae_probes.utils_data.get_yvals`` does):
0/1 stay 0/1, False/True -> 0/1, strings in sorted order (``'clickbait' < 'factual'`` gives
clickbait 0, factual 1).

**The split.** :func:`split_indices` draws at most ``max_examples`` rows, half from each class
where the smaller class allows (the paper also samples classes equally), then a stratified
train/test split, all from one seeded generator: the same (dataset, max_examples, test_fraction,
seed) always gives the same rows.

Shape legend: N examples.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SUFFIXES = (".csv.zst", ".csv")
PIP_COMMAND = "pip install --no-deps sae-probes==0.4.2 zstandard"


@dataclass
class ProbingDataset:
    """One binary dataset: its texts and 0/1 labels."""

    name: str
    """File name without its suffix, e.g. ``113_movie_sent``."""
    texts: list[str]
    """The ``prompt`` column."""
    y_N: np.ndarray
    """Labels in {0, 1} (int64): the rank of each target among the two sorted values."""
    classes: tuple[str, str]
    """The target values labelled 0 and 1, as text."""


class NotBinaryError(ValueError):
    """The dataset's target does not hold exactly two values (multiclass or numeric)."""


def default_data_dir() -> Path:
    """``sae_probes/data/cleaned_data`` of the installed wheel, found without importing it."""
    spec = importlib.util.find_spec("sae_probes")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the SAE-Probes datasets are not installed; run: {PIP_COMMAND}")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "cleaned_data"


def _files(data_dir: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted(Path(data_dir).iterdir()):
        for suffix in SUFFIXES:
            if path.name.endswith(suffix):
                out.setdefault(path.name[: -len(suffix)], path)
                break
    return out


def _number_key(name: str) -> tuple[int, str]:
    m = re.match(r"(\d+)_", name)
    return (int(m.group(1)) if m else 1 << 30, name)


def list_datasets(data_dir: str | Path | None = None) -> list[str]:
    """Every dataset name in ``data_dir`` (default: the wheel's), in the order of its number."""
    return sorted(_files(Path(data_dir or default_data_dir())), key=_number_key)


def _path_of(name: str, data_dir: Path) -> Path:
    files = _files(data_dir)
    if name not in files:
        close = difflib.get_close_matches(name, list(files), n=3, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else f"{len(files)} datasets there"
        raise ValueError(f"unknown dataset {name!r} in {data_dir} ({hint})")
    return files[name]


def _read_csv(path: Path, name: str):
    """``path``'s DataFrame, checked for the columns ``prompt`` and ``target``; pandas reads .zst
    with zstandard."""
    import pandas as pd

    if path.name.endswith(".zst") and importlib.util.find_spec("zstandard") is None:
        raise ImportError(f"reading {path.name} needs zstandard; run: pip install zstandard")
    df = pd.read_csv(path)
    missing = {"prompt", "target"} - set(df.columns)
    if missing:
        raise ValueError(f"dataset {name!r} ({path}) lacks the column(s) {sorted(missing)}; it has "
                         f"{list(df.columns)}")
    return df


def _binary(df, name: str) -> ProbingDataset:
    """The rows with a text and a target, labelled by the target's rank among its two sorted
    values; :class:`NotBinaryError` unless there are exactly two."""
    df = df[df["prompt"].notna() & df["target"].notna()]
    values, y_N = np.unique(df["target"].to_numpy(), return_inverse=True)
    if len(values) != 2:
        raise NotBinaryError(f"dataset {name!r} has {len(values)} distinct targets, not 2 (multiclass or "
                             "numeric targets are skipped)")
    return ProbingDataset(name=name, texts=[str(t) for t in df["prompt"]], y_N=y_N.astype(np.int64),
                          classes=(str(values[0]), str(values[1])))


def read_table(name: str, data_dir: str | Path | None = None):
    """The dataset's DataFrame (columns ``prompt``, ``target``); pandas reads .zst with zstandard."""
    return _read_csv(_path_of(name, Path(data_dir or default_data_dir())), name)


def load_dataset(name: str, data_dir: str | Path | None = None) -> ProbingDataset:
    """Read dataset ``name``; :class:`NotBinaryError` unless its target holds two values."""
    return _binary(read_table(name, data_dir), name)


def class_counts(name: str, data_dir: str | Path | None = None) -> tuple[int, int] | None:
    """(count of label 0, count of label 1), or None when the dataset is not binary."""
    try:
        y_N = load_dataset(name, data_dir).y_N
    except NotBinaryError:
        return None
    return int((y_N == 0).sum()), int((y_N == 1).sum())


def default_datasets(data_dir: str | Path | None = None, *, min_per_class: int = 100) -> list[str]:
    """The binary datasets with at least ``min_per_class`` examples of each label."""
    out = []
    for name in list_datasets(data_dir):
        counts = class_counts(name, data_dir)
        if counts is not None and min(counts) >= min_per_class:
            out.append(name)
    return out


OOD_SUFFIX = "_OOD"


def default_ood_dir() -> Path:
    """``sae_probes/data/OOD data`` of the installed wheel: out-of-distribution test texts for 8
    of the datasets (``{name}_OOD.csv.zst``, e.g. names in other languages or with typos)."""
    return default_data_dir().parent / "OOD data"


def ood_datasets(ood_dir: str | Path | None = None) -> dict[str, Path]:
    """{base dataset name: its OOD file} for every ``{name}_OOD.csv(.zst)`` in ``ood_dir``."""
    folder = Path(ood_dir or default_ood_dir())
    if not folder.is_dir():
        return {}
    return {name[: -len(OOD_SUFFIX)]: path for name, path in _files(folder).items() if name.endswith(OOD_SUFFIX)}


def load_ood(name: str, ood_dir: str | Path | None = None) -> ProbingDataset:
    """Dataset ``name``'s OOD test set, labelled as ``sae_probes.utils_data.get_xy_OOD`` does: the
    rank of each target among the OOD file's own two sorted values (``90_glue_qnli`` is 0/1
    in-distribution and entailment/not_entailment out of it: entailment 0, as in GLUE)."""
    path = ood_datasets(ood_dir).get(name)
    if path is None:
        raise ValueError(f"dataset {name!r} has no {name}{OOD_SUFFIX} file in {ood_dir or default_ood_dir()}")
    return _binary(_read_csv(path, name + OOD_SUFFIX), name + OOD_SUFFIX)


def split_indices(y_N: np.ndarray, *, max_examples: int, test_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices), sorted: at most ``max_examples`` rows, as close to half of
    each label as the smaller class allows, split per label so both parts keep the balance."""
    y_N = np.asarray(y_N)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y_N == 1), np.flatnonzero(y_N == 0)
    n = min(max_examples, len(y_N))
    n_pos = min(len(pos), max(n // 2, n - len(neg)))
    n_neg = min(len(neg), n - n_pos)
    train, test = [], []
    for idx, m in ((pos, n_pos), (neg, n_neg)):
        chosen = rng.choice(idx, size=m, replace=False)
        n_test = int(round(test_fraction * m))
        test.append(chosen[:n_test])
        train.append(chosen[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


__all__ = ["ProbingDataset", "NotBinaryError", "default_data_dir", "list_datasets", "read_table",
           "load_dataset", "class_counts", "default_datasets", "split_indices", "PIP_COMMAND", "OOD_SUFFIX",
           "default_ood_dir", "ood_datasets", "load_ood"]
