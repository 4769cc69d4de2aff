"""``saelens-lite bench synthsae``: train SAEs on a SynthSAEBench model with
``saelens_lite.training.train``, streaming its samples, and score them (``metrics``).

Training reads batch b of the model's training stream (seed = the run's seed), drawn when the
trainer asks for it: nothing is cached, so 200M samples cost no memory. Scores are on
``n_eval`` samples of the held-out stream, which no training batch uses. Results are written
as one JSON file and one markdown table, each atomically, only after every SAE is scored.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from saelens_lite.evals.synthsae.metrics import score_sae
from saelens_lite.evals.synthsae.model import TRAIN_STREAM, SynthSAEConfig, SynthSAEModel
from saelens_lite.training.data import DataSource
from saelens_lite.util.atomic import write_json, write_text

log = logging.getLogger(__name__)

HOOK = "synthsae"

#: Published SynthSAEBench-16k results (width 4096, 200M samples, lr 3e-4, batch 1024;
#: SAELens docs/synth_sae_bench.md, mean of their seeds): (MCC, F1, uniqueness, var. explained).
PUBLISHED = {
    25: {"batchtopk": (0.7574, 0.7316, 0.9837, 0.7923), "matryoshka": (0.7927, 0.8793, 0.9987, 0.7792),
         "jumprelu": (0.7527, 0.7317, 0.9885, 0.7951), "relu (standard L1)": (0.6039, 0.5562, 0.8976, 0.7654),
         "matching pursuit": (0.6930, 0.4464, 0.8281, 0.8351)},
    20: {"batchtopk": (0.7526, 0.8183, 0.9760, 0.7889), "matryoshka": (0.7455, 0.8601, 0.9874, 0.7699),
         "jumprelu": (0.7434, 0.8241, 0.9781, 0.7906), "relu (standard L1)": (0.5834, 0.5777, 0.8528, 0.7501),
         "matching pursuit": (0.6748, 0.4439, 0.7552, 0.8267)},
}


class SynthSAESource(DataSource):
    """The training stream of a SynthSAEBench model as a trainer data source: batch b of seed s
    is ``model.batch(B, stream=TRAIN_STREAM, seed=s, index=b)``, so resume is exact."""

    def __init__(self, model: SynthSAEModel, hook: str = HOOK):
        self.model = model
        self.widths = {hook: model.cfg.d}

    def batches(self, batch_size: int, *, seed: int, start_batch: int = 0, reuse: int = 0):
        hook = self.hooks[0]
        for b in itertools.count(start_batch):
            x_BD, _ = self.model.batch(batch_size, stream=TRAIN_STREAM, seed=seed, index=b)
            yield {hook: x_BD}


@dataclass
class SynthSAERun:
    """What ``run_bench`` trains and how it scores."""

    architectures: list[str] = field(default_factory=lambda: ["topk", "batchtopk", "jumprelu", "matryoshka", "relu"])
    """Architectures to train, one SAE each."""
    samples: int = 1_000_000
    """Training samples per SAE (the published runs: 200M)."""
    width: int = 4096
    """SAE latents F."""
    l0: int = 25
    """k of topk / batchtopk / matryoshka, the target L0 of jumprelu (relu: set by its L1)."""
    batch_size: int = 1024
    """Samples per optimiser step (the published runs: 1024)."""
    lr: float | None = None
    """Adam lr; None: the trainer's rule for this width and run length."""
    seed: int = 0
    """Seed of the SAE init and of the training stream."""
    n_eval: int = 100_000
    """Held-out samples the scores are measured on."""
    eval_seed: int = 0
    """Seed of the held-out stream."""
    sae_options: dict[str, dict] = field(default_factory=dict)
    """{architecture: {SAEConfig field: value}}."""
    dead_min_rate: float | None = None
    """TrainConfig.dead_min_rate: also feed AuxK the latents firing below this rate (None: off)."""
    checkpoint_every: int = 0
    """Write a resumable checkpoint every this many training samples (0: never; needs a save dir)."""
    resume: bool = False
    """Continue each architecture's interrupted run from its newest checkpoint in the save dir
    (the resumed run ends bit-identical to an uninterrupted one: batch b of the stream is fixed)."""

    def __post_init__(self) -> None:
        from saelens_lite.saes import REGISTRY
        from saelens_lite.training.config import check_dead_min_rate
        from saelens_lite.util.validate import check_ints

        unknown = [a for a in self.architectures if a not in REGISTRY]
        if unknown:
            raise ValueError(f"architecture {unknown[0]!r}: unknown; choose from {sorted(REGISTRY)}")
        for name in ("samples", "width", "l0", "batch_size", "n_eval"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}={v!r}: must be an integer >= 1")
        if self.l0 > self.width:
            raise ValueError(f"l0={self.l0}: k larger than the width {self.width}")
        if self.samples < self.batch_size:
            raise ValueError(f"samples={self.samples}: fewer than one batch of {self.batch_size}")
        check_ints(self, ("checkpoint_every",), minimum=0)
        check_dead_min_rate(self.dead_min_rate)  # before the model is built, not at training


def train_one(model: SynthSAEModel, run: SynthSAERun, arch: str, out_dir: str | Path, *, progress: bool = False):
    """Train one SAE of ``arch`` on the model's stream; returns it (saved under out_dir)."""
    from saelens_lite.training import TrainConfig, train

    # the train command's flat spelling (training.sae_flags): --arch --latents --k --option
    tc = TrainConfig.from_dict(dict(
        architecture=arch, latents=run.width, k=run.l0, sae_options=run.sae_options.get(arch, {}),
        lr=run.lr, batch_size=run.batch_size, tokens=run.samples, seed=run.seed, out_dir=str(out_dir),
        progress=progress, checkpoint_every=run.checkpoint_every, resume=run.resume, dead_min_rate=run.dead_min_rate,
        log_every=max(1, run.samples // run.batch_size // 20),
        dead_window_tokens=min(1_000_000, max(run.batch_size, run.samples // 4))))
    return train(tc, SynthSAESource(model))


def run_bench(cfg: SynthSAEConfig, run: SynthSAERun, *, model_cache: str | Path | None = None,
              save_dir: str | Path | None = None, progress: bool = False) -> dict:
    """Train and score each architecture of ``run`` on the model of ``cfg``. Returns
    ``{"model": ..., "run": ..., "rows": [...]}`` (one row per architecture)."""
    if (run.checkpoint_every or run.resume) and not save_dir:
        raise ValueError("checkpoint_every / resume: need a save dir (--save-dir), where the checkpoints live")
    model = cfg.build(cache_dir=model_cache)
    rows = []
    for arch in run.architectures:
        t = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="synthsae_") as tmp:
            out = Path(save_dir) / arch if save_dir else Path(tmp)
            sae = train_one(model, run, arch, out, progress=progress)
            seconds = time.perf_counter() - t
            row = {"architecture": arch, "training_samples": run.samples, "seed": run.seed,
                   "train_seconds": seconds} | score_sae(sae, model, n_eval=run.n_eval, seed=run.eval_seed)
        log.info("%s: %s", arch, row)
        rows.append(row)
    return {"model": asdict(cfg), "run": asdict(run), "rows": rows}


def score_saved(cfg: SynthSAEConfig, sae_dir: str | Path, *, n_eval: int = 100_000, eval_seed: int = 0,
                model_cache: str | Path | None = None) -> dict:
    """Score an SAE saved by saelens_lite (or anything ``saes.interop.load_any`` reads)."""
    from saelens_lite.saes.interop import load_any

    sae = load_any(sae_dir)
    if sae.cfg.d_in != cfg.d:
        raise ValueError(f"--sae {str(sae_dir)!r}: its width d_in={sae.cfg.d_in} does not match the model's d={cfg.d}")
    model = cfg.build(cache_dir=model_cache)
    row = {"architecture": sae.cfg.architecture, "sae": str(sae_dir)} | score_sae(sae, model, n_eval=n_eval,
                                                                                 seed=eval_seed)
    return {"model": asdict(cfg), "run": {"sae": str(sae_dir), "n_eval": n_eval, "eval_seed": eval_seed},
            "rows": [row]}


COLUMNS = (("architecture", "{}"), ("mcc", "{:.4f}"), ("f1", "{:.4f}"), ("uniqueness", "{:.4f}"),
           ("explained_variance", "{:.4f}"), ("precision", "{:.4f}"), ("recall", "{:.4f}"), ("l0", "{:.2f}"),
           ("dead_latents", "{}"), ("shrinkage", "{:.4f}"))


def format_table(result: dict) -> str:
    """Markdown table of the rows, headed by where the numbers were measured."""
    rows = result["rows"]
    run = result["run"]
    m = result["model"]
    head = (f"SynthSAEBench model: G={m['n_features']} features, D={m['d']}, seed {m['seed']}. "
            f"Scores on {rows[0]['heldout_samples']:,} held-out samples (held-out stream, seed "
            f"{rows[0]['heldout_seed']}); true L0 {rows[0]['true_l0']:.2f}.")
    if "samples" in run:
        head += (f" Trained on {run['samples']:,} streamed samples each (batch {run['batch_size']}, "
                 f"lr {run['lr'] if run['lr'] is not None else 'trainer default'}, width {run['width']}, "
                 f"L0 {run['l0']}, seed {run['seed']}).")
    lines = [head, "", "| " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(f.format(r[c]) for c, f in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_results(result: dict, out: str | Path) -> tuple[Path, Path]:
    """``out``.json and ``out``.md, each written atomically (nothing half-written on failure).
    The suffixes are appended to the whole name (``l1_3.5`` -> ``l1_3.5.json``); a trailing
    ``.json`` or ``.md`` on ``out`` is dropped first."""
    out = Path(out)
    if out.suffix in (".json", ".md"):
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    js, md = out.with_name(out.name + ".json"), out.with_name(out.name + ".md")
    table = format_table(result)
    write_json(js, result)
    write_text(md, table)
    return js, md


__all__ = ["SynthSAESource", "SynthSAERun", "run_bench", "score_saved", "format_table", "write_results",
           "train_one", "PUBLISHED"]
