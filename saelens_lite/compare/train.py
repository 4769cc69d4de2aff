"""Training every model of a comparison under one budget: the model list (:func:`model_specs`),
the trainer for token-level models, and :func:`train_sequences` for models that read whole
contexts (the 1d convolutional baseline).

Shape legend: N contexts, B batch, S sequence, D input width.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from saelens_lite.compare.config import CompareConfig
from saelens_lite.compare.data import Dataset
from saelens_lite.saes import REGISTRY, SAEConfig, get_sae_class
from saelens_lite.training import TrainConfig, train
from saelens_lite.training.hook_state import build_sae, make_adam, normalization_scale
from saelens_lite.training.schedules import lr_at
from saelens_lite.training.step import AutogradStep

log = logging.getLogger(__name__)

# The architecture trained again at each of ``CompareConfig.frontier_ks`` (the L0-FVU frontier).
FRONTIER_ARCH = "topk"


def model_specs(data: Dataset, cfg: CompareConfig) -> list[tuple[str, dict]]:
    """(row name, SAEConfig overrides) for every registered architecture under the budget."""
    D, F_ = data.x_train.shape[1], cfg.latents
    specs = []
    for arch in sorted(REGISTRY):
        opts = {"architecture": arch, "d_sae": F_, "k": cfg.k} | cfg.options.get(arch, {})
        if arch == "dense":
            under = cfg.undercomplete or max(D // 4, 1)
            specs.append((f"dense-under (F={under})", opts | {"d_sae": under, "k": 1}))
            specs.append((f"dense-over (F={F_})", opts))
        elif arch == "conv":
            if data.kind == "images":
                cells = (data.image_side // 4) ** 2
                specs.append(("conv-2d", opts | {"conv_kind": "2d", "d_sae": max(F_ // cells, 1), "k": 1}))
            else:
                specs.append(("conv-1d", opts | {"conv_kind": "1d", "k": 1}))
        else:
            specs.append((arch, opts))
    specs += [(f"{FRONTIER_ARCH} k={k}", {"architecture": FRONTIER_ARCH, "d_sae": F_, "k": k})
              for k in cfg.frontier_ks if k != cfg.k]
    return specs


def train_config(cfg: CompareConfig, opts: dict, out: Path) -> TrainConfig:
    """The TrainConfig of one model under the comparison's budget and schedule."""
    steps = cfg.tokens // cfg.batch_size
    sae_options = {k: v for k, v in opts.items() if k not in ("architecture", "d_sae", "k")}
    sae = SAEConfig.build(architecture=opts["architecture"], d_sae=opts["d_sae"], k=opts["k"],
                          **({"b_dec_init": "mean"} | sae_options))
    return TrainConfig(sae=sae, lr=cfg.lr, batch_size=cfg.batch_size, tokens=cfg.tokens,
                       warmup_steps=max(1, steps // 20), decay="linear", decay_fraction=0.2,
                       init_sample_tokens=min(16_384, cfg.tokens),
                       dead_window_tokens=max(cfg.tokens // 10, cfg.batch_size), checkpoint_every=0,
                       log_every=max(1, steps // 10), progress=False, device="cpu", seed=cfg.seed,
                       out_dir=str(out))


def train_sequences(config, seq_NSD: torch.Tensor):
    """The trainer's loop (trainer.py) for models that need whole contexts: each step takes
    ``batch_size // S`` random contexts (B, S, D), with the same normalisation scale, b_dec init,
    Adam, ``lr_at`` schedule, training step (``training.step.AutogradStep``, gradient clipping
    included) and save format. Returns the trained model (input scale folded in) and saves it
    to ``config.out_dir/model``."""
    torch.manual_seed(config.seed)
    N, S, D = seq_NSD.shape
    g = torch.Generator().manual_seed(config.seed)
    sample = seq_NSD.reshape(-1, D)[torch.randperm(N * S, generator=g)[: config.init_sample_tokens]]
    scale = normalization_scale(sample)
    sae = build_sae(config, D)
    sae.init_from_data_(sample * scale)
    base_lr = config.lr_for(sae.cfg.d_sae)
    # as train() makes it for the other models (equal footing)
    opt = make_adam(sae.parameters(), base_lr, tuple(config.betas), torch.device("cpu"))
    train_step = AutogradStep(sae, opt, grad_clip=config.grad_clip)
    per_step = max(1, config.batch_size // S)
    sae.train()
    for step in range(config.steps):
        idx = torch.randint(0, N, (per_step,), generator=g)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, config, base_lr)
        train_step(seq_NSD[idx] * scale)
    sae.eval()
    sae.fold_input_scale_(scale)
    sae.save(Path(config.out_dir) / "model")
    return sae


def train_all(data: Dataset, cfg: CompareConfig, out_dir: Path) -> dict:
    """{row name: (trained model, seconds)}."""
    models = {}
    for name, opts in model_specs(data, cfg):
        tc = train_config(cfg, opts, out_dir / "models" / slug(name))
        t0 = time.perf_counter()
        if data.seq_train is not None and not get_sae_class(opts["architecture"]).tokenwise:
            sae = train_sequences(tc, data.seq_train)
        else:
            sae = train(tc, data.x_train)
        models[name] = (sae.eval(), time.perf_counter() - t0)
        log.info("trained %s in %.1fs", name, models[name][1])
    return models


def slug(name: str) -> str:
    """A row name as a folder name."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_")

