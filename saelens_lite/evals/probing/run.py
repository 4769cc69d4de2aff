"""``run_probing``: every probe of :mod:`.probes` for every (autoencoder, dataset, pooling), with the
dense probe once per (hook, dataset, pooling), resumable.

Phases: check every input before anything is written (datasets known and binary, each
autoencoder's hook and width, k <= width), then per dataset: split, pooled activations (cached,
:mod:`.acts`), the dense probe and each autoencoder's probes, each result written atomically to
``{out}/results/`` as soon as it is known; a re-run reads those back instead of refitting.
Last, the report (:mod:`.report`).

Shape legend: N examples, T token rows, D hook width, F latents.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from saelens_lite.evals.probing import acts, data
from saelens_lite.evals.probing.probes import ProbeConfig
from saelens_lite.evals.probing.report import DENSE, SETTINGS
from saelens_lite.evals.probing.splits import Split, Variant, variants
from saelens_lite.lm.hooks import warn_if_other_hook
from saelens_lite.util.atomic import write_json
from saelens_lite.util.validate import check_ints

log = logging.getLogger(__name__)

POOLING_CHOICES = ("last", "mean", "both")


@dataclass
class ProbingConfig:
    """What ``saelens-lite bench probing`` probes and how."""

    model: str = "smollm2-135m"
    """Model alias, Hugging Face id or path whose hook the autoencoders read."""
    datasets: list[str] = field(default_factory=list)
    """Dataset file names (e.g. 113_movie_sent); empty: every binary dataset with at least
    min_per_class examples of each label."""
    max_examples: int = 600
    """At most this many texts per dataset (half per label), split into train and test (450 / 150
    by default): sized for a shared CPU (docs/probing.md gives the times); the paper trains on 1024."""
    test_fraction: float = 0.25
    """Share of each label's texts held out for the test scores."""
    ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    """Latents per sparse probe, chosen by mean difference on the training split."""
    pooling: str = "last"
    """last (the last text token, the paper's), mean (over the text tokens, SAEBench's), or both."""
    hook: str = ""
    """Hook to read (empty: each autoencoder's own cfg.hook_name)."""
    max_tokens: int = 256
    """Tokens per text, BOS included; a longer text keeps its last tokens."""
    batch_tokens: int = 4096
    """Padded tokens per model forward."""
    min_per_class: int = 100
    """Default dataset selection: at least this many examples of each label."""
    all_latents: bool = True
    """Also fit the probe on every latent."""
    train_sizes: list[int] = field(default_factory=list)
    """The paper's data-scarce setting: also fit every probe on a balanced subset of this many
    training texts (half per label, one seeded draw per size; the test split is unchanged). A
    size at or above a dataset's training split is skipped there. Empty: the full split only."""
    pos_fractions: list[float] = field(default_factory=list)
    """The paper's class-imbalance setting: also fit every probe on a training subset whose share
    of positive texts is each of these fractions (0 < f < 1; the paper sweeps 0.05 ... 0.95), of
    one size per dataset: the largest every listed fraction can be drawn at from its training
    split (236 of 450 texts for 0.05 ... 0.95), ceil(f n) positive. The test split is unchanged
    (balanced: the paper draws its test set at the same ratio; AUC does not depend on it in
    expectation, accuracy does). A fraction whose smaller class would have fewer texts than the
    cross-validation folds is skipped on that dataset. Empty: off."""
    label_noise: list[float] = field(default_factory=list)
    """The paper's label-noise setting: also fit every probe on the full training split with this
    fraction of its labels flipped (0 < f <= 0.5; int(f n) seeded texts, as
    ``sae_probes.utils_data.corrupt_ytrain``); the latents are chosen on the noisy labels too,
    and the test labels stay clean. Empty: off."""
    draws: int = 1
    """Seeded draws per training size, class fraction and noise level (rows carry ``draw``; the
    report averages a dataset's draws before averaging datasets)."""
    ood: bool = False
    """The paper's covariate-shift setting: also score each probe, fitted on the full training
    split, on the dataset's out-of-distribution texts (the wheel's ``OOD data``: 8 datasets; the
    others get no OOD rows)."""
    seed: int = 0
    """Seed of the example draw, the split and the cross-validation folds."""
    data_dir: str = ""
    """Folder of NAME.csv(.zst) datasets (empty: the sae-probes wheel's cleaned_data)."""
    ood_dir: str = ""
    """Folder of NAME_OOD.csv(.zst) test sets for ``ood`` (empty: the wheel's ``OOD data``)."""
    cache_dir: str = ""
    """Activation cache folder (empty: OUT/activations)."""
    device: str = "cpu"
    """Device of the model and the autoencoders."""

    def __post_init__(self) -> None:
        check_ints(self, ("max_examples", "max_tokens", "batch_tokens", "min_per_class"), minimum=2)
        check_ints(self, ("seed",), minimum=0)
        if not self.ks or any(not isinstance(k, int) or k < 1 for k in self.ks):
            raise ValueError(f"ProbingConfig.ks={self.ks!r}: give one or more integers >= 1")
        if self.pooling not in POOLING_CHOICES:
            raise ValueError(f"ProbingConfig.pooling={self.pooling!r}: choose one of {list(POOLING_CHOICES)}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"ProbingConfig.test_fraction={self.test_fraction!r}: must be in (0, 1)")
        if any(not isinstance(n, int) or n < 2 for n in self.train_sizes):
            raise ValueError(f"ProbingConfig.train_sizes={self.train_sizes!r}: give integers >= 2")
        if any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1 for f in self.pos_fractions):
            raise ValueError(f"ProbingConfig.pos_fractions={self.pos_fractions!r}: give fractions of positive "
                             "training texts strictly between 0 and 1")
        if any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 0.5 for f in self.label_noise):
            raise ValueError(f"ProbingConfig.label_noise={self.label_noise!r}: give fractions of flipped training "
                             "labels in (0, 0.5]")
        check_ints(self, ("draws",), minimum=1)

    @property
    def poolings(self) -> tuple[str, ...]:
        return acts.POOLINGS if self.pooling == "both" else (self.pooling,)


@dataclass
class Probed:
    """One autoencoder under test."""

    path: Path
    sae: object
    hook: str
    label: str
    key: str
    """Short hash of the folder and its weights' size and time: names its result files."""


def _load_saes(paths: list[str], hook: str, device: str) -> list[Probed]:
    """Each folder as our SAE: ours (``SAE.save`` / ``saelens-lite train``, the baselines
    included), SAELens's or sparsify's (``saes.interop.load_any`` detects the format)."""
    from saelens_lite.saes.interop import load_any

    out = []
    for p in map(Path, paths):
        weights = sorted(p.glob("*.safetensors")) if p.is_dir() else []
        if not weights:
            raise ValueError(f"--sae {p}: no *.safetensors there (a folder written by saelens-lite train, "
                             f"SAELens or sparsify)")
        sae = load_any(p, device=device).eval()
        h = hook or getattr(sae.cfg, "hook_name", "")
        if not h:
            raise ValueError(f"--sae {p}: its cfg.json names no hook_name; pass --hook")
        warn_if_other_hook(sae, h, "probed")
        stamp = "|".join(f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights)
        key = hashlib.sha1(f"{p.resolve()}|{stamp}".encode()).hexdigest()[:10]
        # train writes RUN/<hook>/, compare RUN/models/<name>/model: name it by the run folder
        name = p.parent.name if p.name in ("model", getattr(sae.cfg, "hook_name", "")) else p.name
        label = f"{sae.architecture}-{sae.cfg.d_sae} ({name})"
        taken = sum(o.label == label or o.label.startswith(f"{label} #") for o in out)
        out.append(Probed(p, sae, h, label + (f" #{taken + 1}" if taken else ""), key))
    return out


def _check_inputs(cfg: ProbingConfig, probed: list[Probed], names: list[str], lm_widths) -> None:
    known = set(data.list_datasets(cfg.data_dir or None))
    for name in names:
        if name not in known:
            data.read_table(name, cfg.data_dir or None)  # raises, naming the closest
        if cfg.datasets and data.class_counts(name, cfg.data_dir or None) is None:
            raise ValueError(f"dataset {name!r} is not binary (multiclass or numeric targets are skipped)")
    widths = lm_widths(sorted({p.hook for p in probed}))
    for p in probed:
        if p.sae.cfg.d_in != widths[p.hook]:
            raise ValueError(f"--sae {p.path}: d_in={p.sae.cfg.d_in} does not match the width {widths[p.hook]} "
                             f"of {p.hook} in {cfg.model}")
        if max(cfg.ks) > p.sae.cfg.d_sae:
            raise ValueError(f"--k {max(cfg.ks)} is larger than the width d_sae={p.sae.cfg.d_sae} of --sae {p.path}")


class _Model:
    """Loads the model once, on first use (a run whose activations are all cached never does)."""

    def __init__(self, cfg: ProbingConfig):
        self.cfg, self.lm = cfg, None

    def __call__(self):
        if self.lm is None:
            from saelens_lite.lm import load_model

            self.lm = load_model(self.cfg.model, device=self.cfg.device)
        return self.lm

    def widths(self, hooks: list[str]) -> dict[str, int]:
        from saelens_lite.lm import hook_widths

        return hook_widths(self().model, hooks)


@torch.no_grad()
def encode_pooled(sae, rows: acts.TokenRows, how: str, *, device: str = "cpu", chunk_rows: int = 8192) -> np.ndarray:
    """(N, F) float32: the SAE's latents of every token row, pooled per text (``acts.pool``), in
    chunks of whole texts of about ``chunk_rows`` rows."""
    out, n = [], rows.n
    start = 0
    while start < n:
        stop = int(np.searchsorted(rows.offsets, rows.offsets[start] + chunk_rows, side="right")) - 1
        stop = min(max(stop, start + 1), n)
        lo, hi = rows.offsets[start], rows.offsets[stop]
        z_TF = sae.encode(torch.as_tensor(rows.rows_TD[lo:hi], device=device))
        out.append(acts.pool(z_TF.float(), rows.offsets[start:stop + 1] - lo, how).cpu().numpy())
        start = stop
    return np.concatenate(out)


def _cached_json(path: Path, compute) -> dict:
    """``path``'s JSON if a run already wrote it, else ``compute()`` written atomically."""
    if path.exists():
        return json.loads(path.read_text())
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    return result


@dataclass
class _Pooled:
    """One (hook, pooling) of a set of texts: the pooled activations and each autoencoder's pooled
    latents, each computed once, on first need (a run whose results are cached needs neither),
    and shared by the full-split, data-scarce and OOD probes."""

    tok: acts.TokenRows
    how: str
    device: str
    _z: dict = field(default_factory=dict)

    @functools.cached_property
    def x_ND(self) -> np.ndarray:
        return acts.pool(self.tok.rows_TD, self.tok.offsets, self.how)

    def z_NF(self, p: Probed) -> np.ndarray:
        if p.key not in self._z:
            self._z[p.key] = encode_pooled(p.sae, self.tok, self.how, device=self.device)
        return self._z[p.key]


def _dense_row(base: dict, score: dict) -> dict:
    return base | {"sae": DENSE, "probe": "dense", "k": None} | score


def _sae_rows(base: dict, label: str, res: dict) -> list[dict]:
    """One row per probe of an autoencoder's results (``sparse_probes``'s dict, as stored)."""
    return [base | {"sae": label, "probe": name, "k": int(name[2:]) if name.startswith("k=") else None} | score
            for name, score in res.items() if name != "latents"]


def _pooled_rows(cfg, probe_cfg, split: Split, base: dict, pooled: _Pooled, probed, where: Path,
                 rkey: str) -> list[dict]:
    """The dense probe's row and each autoencoder's probe rows on one (hook, pooling)."""
    dense = _cached_json(where / f"dense-{rkey}.json", lambda: split.dense(pooled.x_ND, probe_cfg, cfg.seed))
    rows = [_dense_row(base, dense)]
    for p in probed:
        res = _cached_json(where / f"sae-{p.key}-{rkey}.json",
                           lambda p=p: split.sparse(pooled.z_NF(p), cfg, probe_cfg))
        rows += _sae_rows(base, p.label, res)
    return rows


def _variant_rows(cfg, probe_cfg, split: Split, base: dict, pooled: _Pooled, probed, where: Path, rkey: str,
                  variants: list[Variant]) -> list[dict]:
    """The rows of :func:`_pooled_rows` refitted on each variant of the training split, each row
    with the variant's fields and its own training counts."""
    rows = []
    for v in variants:
        y_N = split.y_N[v.pick] if v.y_N is None else v.y_N[v.pick]
        sub = Split(split.idx_N[v.pick], v.n_train, y_N)
        b = base | v.fields | {"n_train": v.n_train, "n_train_pos": int(y_N[: v.n_train].sum())}
        tag = f"{rkey}-{v.tag}"
        dense = _cached_json(where / f"dense-{tag}.json",
                             lambda sub=sub, v=v: sub.dense(pooled.x_ND[v.pick], probe_cfg, cfg.seed))
        rows.append(_dense_row(b, dense))
        for p in probed:
            res = _cached_json(where / f"sae-{p.key}-{tag}.json",
                               lambda p=p, sub=sub, v=v: sub.sparse(pooled.z_NF(p)[v.pick], cfg, probe_cfg))
            rows += _sae_rows(b, p.label, res)
    return rows


def _ood_rows(cfg, probe_cfg, split: Split, base: dict, pooled: _Pooled, pooled_ood: _Pooled,
              ood: data.ProbingDataset, probed, where: Path, rkey: str) -> list[dict]:
    """Each probe fitted on the full training split (as in :func:`_pooled_rows`) and scored on
    the OOD texts instead of the test split: rows with ``test_set`` "ood" and the OOD set's
    counts and classes."""
    n, y_ood = split.n_train, ood.y_N
    both = Split(np.arange(n + len(y_ood)), n, np.concatenate([split.y_N[:n], y_ood]))
    b = base | {"test_set": "ood", "n_test": len(y_ood), "n_test_pos": int(y_ood.sum()), "ood_classes": list(ood.classes)}
    x_ND = np.concatenate([pooled.x_ND[:n], pooled_ood.x_ND])
    dense = _cached_json(where / f"ood-dense-{rkey}.json", lambda: both.dense(x_ND, probe_cfg, cfg.seed))
    rows = [_dense_row(b, dense)]
    for p in probed:
        res = _cached_json(where / f"ood-sae-{p.key}-{rkey}.json",
                           lambda p=p: both.sparse(np.concatenate([pooled.z_NF(p)[:n], pooled_ood.z_NF(p)]), cfg,
                                                   probe_cfg))
        rows += _sae_rows(b, p.label, res)
    return rows


def _dataset_rows(cfg, probe_cfg, ds, idx_train, idx_test, probed, get_lm, out: Path,
                  ood: data.ProbingDataset | None = None) -> tuple[list[dict], dict[str, list[dict]], list[dict]]:
    """(rows on the full training split, {key: rows} of the changed training splits
    (:func:`.splits.variants`), OOD rows)."""
    split = Split(np.concatenate([idx_train, idx_test]), len(idx_train),
                   ds.y_N[np.concatenate([idx_train, idx_test])])
    # results of another split, k list or probe setting are other files, never reused
    texts = [ds.texts[i] for i in split.idx_N]  # with the labels: an edited file is another result
    rkey = hashlib.sha1(json.dumps([acts.cache_key(split.idx_N, cfg.max_tokens, "special", texts), cfg.model, cfg.ks,
                                    split.y_N.tolist(),
                                    cfg.all_latents, asdict(probe_cfg)]).encode()).hexdigest()[:10]
    okey = (hashlib.sha1(json.dumps([rkey, acts.cache_key(np.arange(len(ood.texts)), cfg.max_tokens, "special",
                                                            ood.texts), ood.y_N.tolist()]).encode()).hexdigest()[:10]
            if ood is not None else "")
    changes = variants(cfg, split, probe_cfg.folds if len(probe_cfg.cs) > 1 else 1)
    rows, changed, ood_rows = [], {key: [] for key in changes}, []
    for hook in sorted({p.hook for p in probed}):
        kw = dict(poolings=cfg.poolings, cache_dir=cfg.cache_dir or out / "activations", model_name=cfg.model,
                  max_tokens=cfg.max_tokens, batch_tokens=cfg.batch_tokens)
        toks = acts.pooled_rows(get_lm, hook, ds.name, ds.texts, split.idx_N, **kw)
        toks_ood = (acts.pooled_rows(get_lm, hook, ood.name, ood.texts, np.arange(len(ood.texts)), **kw)
                    if ood is not None else {})
        mine = [p for p in probed if p.hook == hook]
        for how, tok in toks.items():
            base = split.counts(ds.name, ds.classes) | {"hook": hook, "pooling": how}
            where = out / "results" / acts.slug(ds.name) / acts.slug(hook) / how
            pooled = _Pooled(tok, how, cfg.device)
            rows += _pooled_rows(cfg, probe_cfg, split, base, pooled, mine, where, rkey)
            for key, vs in changes.items():
                changed[key] += _variant_rows(cfg, probe_cfg, split, base, pooled, mine, where, rkey, vs)
            if ood is not None:
                ood_rows += _ood_rows(cfg, probe_cfg, split, base, pooled, _Pooled(toks_ood[how], how, cfg.device),
                                      ood, mine, where, okey)
    return rows, changed, ood_rows


def run_probing(saes: list[str], cfg: ProbingConfig, out: str | Path, *,
                probe_cfg: ProbeConfig | None = None) -> dict:
    """Probe every autoencoder folder in ``saes`` on ``cfg.datasets`` and write results.json,
    results.md and auc_vs_k.png to ``out``. Returns the results dict (:mod:`.report`)."""
    from saelens_lite.evals.probing import report

    probe_cfg = probe_cfg or ProbeConfig()
    if not saes:
        raise ValueError("give one or more autoencoder folders (--sae DIR ...)")
    probed = _load_saes(saes, cfg.hook, cfg.device)
    names = list(cfg.datasets) or data.default_datasets(cfg.data_dir or None, min_per_class=cfg.min_per_class)
    if not names:
        raise ValueError(f"no binary dataset with >= {cfg.min_per_class} examples per class in "
                         f"{cfg.data_dir or data.default_data_dir()}")
    get_lm = _Model(cfg)
    _check_inputs(cfg, probed, names, get_lm.widths)
    if len(probe_cfg.cs) > 1 and cfg.train_sizes and min(cfg.train_sizes) // 2 < probe_cfg.folds:
        raise ValueError(f"--train-sizes {min(cfg.train_sizes)}: below {2 * probe_cfg.folds}, the smallest size whose "
                         f"{probe_cfg.folds}-fold cross-validation (choosing C) has a text of each label per fold")
    ood_files = data.ood_datasets(cfg.ood_dir or None) if cfg.ood else {}
    if cfg.ood and not set(names) & set(ood_files):
        raise ValueError(f"--ood: none of the datasets has an OOD test set; those with one: {sorted(ood_files)}")
    out = Path(out)
    rows, changed, ood_rows = [], {key: [] for key in SETTINGS}, []
    for name in names:
        ds = data.load_dataset(name, cfg.data_dir or None)
        idx_train, idx_test = data.split_indices(ds.y_N, max_examples=cfg.max_examples,
                                                 test_fraction=cfg.test_fraction, seed=cfg.seed)
        log.info("probing %s: %d train, %d test texts", name, len(idx_train), len(idx_test))
        ood = data.load_ood(name, cfg.ood_dir or None) if name in ood_files else None
        full, other, shifted = _dataset_rows(cfg, probe_cfg, ds, idx_train, idx_test, probed, get_lm, out, ood)
        rows += full
        for key, more in other.items():
            changed[key] += more
        ood_rows += shifted
    result = {"config": asdict(cfg), "probe_config": asdict(probe_cfg),
              "saes": {p.label: str(p.path) for p in probed}, "rows": rows}
    for key, setting in SETTINGS.items():
        if getattr(cfg, setting.option):
            result[key] = changed[key]
    if cfg.ood:
        result["ood_rows"] = ood_rows
    report.write_report(result, out)
    return result


__all__ = ["ProbingConfig", "POOLING_CHOICES", "run_probing", "encode_pooled"]
