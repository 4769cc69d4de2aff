"""Where training metrics go: ``metrics.jsonl``, a tqdm progress bar and (optionally) W&B.

W&B never prompts: it runs ``online`` only when a login is configured (``WANDB_API_KEY`` set or
a netrc entry for the W&B host), else ``offline`` (``wandb sync`` uploads it later).
"""

from __future__ import annotations

import json
import logging
import netrc
import os
from pathlib import Path

from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def wandb_logged_in() -> bool:
    """True when W&B can authenticate without asking: an API key in the environment or a
    netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    if mode == "auto":
        return "online" if wandb_logged_in() else "offline"
    return mode


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` in file order, skipping a last line cut short by a
    crash (or being written while it is read)."""
    recs = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return recs


class RunLogger:
    """Appends metric records to ``metrics.jsonl`` and mirrors them to the progress bar and W&B.

    ``metrics.jsonl`` holds one JSON object per (logged step, hook): ``hook``, ``step``,
    ``tokens``, ``loss``, each named loss term, ``l0``, ``fvu``, ``dead_fraction``, ``lr`` and
    ``sparsity_scale`` (``dead_fraction``: latents silent for ``min(dead_window_tokens, half the
    tokens so far)``, see `DeadLatentTracker`; with ``dead_min_rate``, ``rare_fraction``: latents
    below that rate over the window), and for sparse coders the quantiles of the dead and
    live latents' largest pre-activation and firing margin over the batch (``dead_pre_max_q50``,
    ``live_margin_q90``, ...; see :mod:`saelens_lite.training.diagnostics`). A resumed run drops records past the checkpoint
    it resumes from, so the file reads like the one of an uninterrupted run. Under torchrun only rank 0's logger is
    enabled: data parallel, the records are already averaged over ranks; with distributed
    hooks, the trainer gathers every rank's records (``{hook: ...}`` of its own hooks) before
    ``log``, so one writer still holds every hook.
    """

    def __init__(self, run_dir: str | Path, config, *, total_steps: int, start_step: int = 0,
                 enabled: bool = True, desc: str = "train"):
        # ``enabled=False`` (ranks other than 0 of a distributed run): writes nothing, shows no
        # bar, starts no W&B run; the calls are accepted and ignored.
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.file = None
        if enabled:
            self._truncate_after(start_step)
            self.file = open(self.path, "a", encoding="utf-8")
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", desc=desc,
                        disable=not (config.progress and enabled), dynamic_ncols=True)
        self.wandb_run = None
        if config.wandb and enabled:
            self.wandb_run = _init_wandb(Path(run_dir), config)

    def _truncate_after(self, start_step: int) -> None:
        if not self.path.exists():
            return
        # records up to the checkpoint were written before it
        kept = [json.dumps(rec) for rec in read_metrics(self.path) if rec.get("step", 0) <= start_step]
        self.path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")

    def step(self, n: int = 1) -> None:
        self.bar.update(n)

    def log(self, records: list[dict]) -> None:
        """Write one record per hook for the same step."""
        if not self.enabled:
            return
        for rec in records:
            self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        if records:
            r = records[0]
            self.bar.set_postfix(loss=f"{r['loss']:.4g}", l0=f"{r['l0']:.1f}", fvu=f"{r['fvu']:.3f}",
                                 dead=f"{r['dead_fraction']:.2f}", refresh=False)
        if self.wandb_run is not None:
            flat: dict = {}
            for rec in records:
                prefix = f"{rec['hook']}/" if len(records) > 1 else ""
                flat.update({prefix + k: v for k, v in rec.items() if k not in ("hook", "step")})
            self.wandb_run.log(flat, step=records[0]["step"])

    def close(self) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def _init_wandb(run_dir: Path, config):
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    mode = resolve_wandb_mode(config.wandb_mode)
    if mode == "disabled":
        return None
    settings = wandb.Settings(silent=True, console="off", disable_git=True, save_code=False,
                              x_disable_stats=True, x_disable_meta=True)
    return wandb.init(project=config.wandb_project, name=config.wandb_name or run_dir.name,
                      dir=os.environ.get("WANDB_DIR", str(run_dir)), mode=mode,
                      config=config.to_dict(), settings=settings, reinit="finish_previous")


__all__ = ["RunLogger", "read_metrics", "wandb_logged_in", "resolve_wandb_mode"]
