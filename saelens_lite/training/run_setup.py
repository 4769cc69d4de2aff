"""The set-up phase of :func:`saelens_lite.training.trainer.train`: the process group, the data
source and the hooks this process trains (:class:`TrainRun`), each hook's SAE, Adam and step
(:class:`~saelens_lite.training.hook_state.HookState`) and a fresh run's data-dependent init.
The step to start at (resume) and the files a run writes stay with the loop in ``trainer``.

Shapes: N sample rows, D width.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from saelens_lite.training import targets
from saelens_lite.training.config import TrainConfig
from saelens_lite.training.data import DataSource, open_source
from saelens_lite.training.hook_state import (
    HookState,
    autocast_dtype,
    build_sae,
    clip_norm,
    clip_rows,
    normalization_scale,
)
from saelens_lite.util import distributed


@dataclass(frozen=True)
class TrainRun:
    """What every phase of one ``train`` call reads: the config, this process's place in a
    torchrun job, the data source and the hooks this process trains."""

    config: TrainConfig
    dinfo: distributed.DistInfo
    device: torch.device
    by_hook: bool
    """Hooks distributed over the ranks (else data parallel, or one process)."""
    data_parallel: bool
    rows: slice
    """This rank's rows of a global batch: all of them unless data parallel."""
    source: DataSource
    pairs: targets.Pairs
    """Every input hook of the run, in config order, and each transcoder's target."""
    all_widths: dict[str, int]
    hooks: list[str]
    """The hooks this process trains."""
    amp: torch.dtype | None
    run_dir: Path

    @property
    def all_hooks(self) -> list[str]:
        """Every input hook of the run, in config order (``pairs.inputs``)."""
        return self.pairs.inputs


def open_run(config: TrainConfig, data) -> TrainRun:
    """Set-up: the process group, the data source and the hooks this process trains."""
    dinfo, device = distributed.setup(config.device)
    by_hook = config.distribute_hooks and dinfo.distributed  # else: data parallel (or 1 process)
    data_parallel = dinfo.distributed and not by_hook
    # this rank's rows of a global batch: all of them when hooks are distributed
    rows = distributed.rank_slice(config.batch_size, dinfo) if data_parallel else slice(None)
    source = open_source(data, config)
    pairs = targets.resolve(config, source.hooks)
    all_widths = dict(source.widths)  # before select() narrows the source to this rank's hooks
    hooks = distributed.assign_hooks(pairs.inputs, dinfo) if by_hook else pairs.inputs
    if by_hook:  # read (a cache) or capture (a model) only this rank's hooks (and their targets)
        source.select(pairs.with_targets(hooks))
    return TrainRun(config, dinfo, device, by_hook, data_parallel, rows, source, pairs,
                    all_widths, hooks, autocast_dtype(config, device), Path(config.out_dir))


def build_states(run: TrainRun) -> dict[str, HookState]:
    """Set-up: seed every RNG, then build each hook's SAE, Adam and step. Each hook's SAE is
    drawn right after ``torch.manual_seed(seed)``, so it starts as the one-hook run of the same
    seed does: N pairs trained in one pass equal N separate runs on the same batches."""
    config = run.config
    np.random.seed(config.seed)
    random.seed(config.seed)
    # Every rank builds every hook's SAE in config order (on the CPU, keeping only its own), so
    # the global RNG leaves set-up in the state a one-process run leaves it in.
    states = {}
    for h in run.all_hooks:
        torch.manual_seed(config.seed)
        sae = build_sae(config, run.all_widths[h], h, target=run.pairs.target(h), model_name=run.source.model_name)
        if h in run.hooks:
            states[h] = HookState(sae, config, run.device, run.data_parallel, run.amp)
        del sae
    return states


def init_from_data(run: TrainRun, states: dict[str, HookState]) -> None:
    """Each hook's normalisation scale(s) and data-dependent init from a fixed sample."""
    config = run.config
    sample = run.source.sample(config.init_sample_tokens, seed=config.seed)
    for h, st in states.items():
        x_ND = sample[h].to(run.device, torch.float32)
        st.scale = normalization_scale(x_ND) if config.normalize_activations else 1.0
        target = run.pairs.target(h)
        if not target:
            if config.outlier_norm_ratio is not None and st.sae.rank_selected:
                st.max_norm = clip_norm(x_ND * st.scale, config.outlier_norm_ratio)
                x_ND = clip_rows(x_ND * st.scale, st.max_norm) / st.scale
            st.sae.init_from_data_(x_ND * st.scale)  # b_dec per cfg.b_dec_init
            continue
        y_ND = sample[target].to(run.device, torch.float32)
        st.target_scale = normalization_scale(y_ND) if config.normalize_activations else 1.0
        st.sae.init_from_data_(x_ND * st.scale, y_ND * st.target_scale)  # b_dec from targets
    if run.data_parallel:  # every rank computed the same init; make that exact
        scales = distributed.broadcast_object({h: (st.scale, st.target_scale, st.max_norm)
                                               for h, st in states.items()})
        for h, st in states.items():
            st.scale, st.target_scale, st.max_norm = scales[h]
            distributed.broadcast_module_(st.sae)


__all__ = ["TrainRun", "open_run", "build_states", "init_from_data"]
