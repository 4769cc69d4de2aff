"""``saelens-lite finetune``: fine-tune a trained SAE or transcoder end to end on the model's output."""

from __future__ import annotations

import argparse

from saelens_lite.cli._common import Formatter


def add(sub) -> None:
    from saelens_lite.training.finetune_config import FinetuneConfig
    from saelens_lite.util.dataclass_args import add_dataclass_args

    p = sub.add_parser("finetune", help="fine-tune an SAE spliced into the frozen model (KL / CE to its output)",
                       formatter_class=Formatter,
                       description="Splice the SAE (or transcoder) into the frozen model at its hook and train "
                                   "its parameters on the model's output: --loss kl (KL to the clean next-token "
                                   "distribution), ce (next-token cross-entropy) or mse+kl (KL plus --mse-coeff "
                                   "times the reconstruction FVU). Contexts stream from --dataset in order; "
                                   "--activations CACHE keeps to the contexts that cache was harvested from, so "
                                   "`saelens-lite eval` on it stays held out. Writes OUT/<hook>/ (cfg.json, "
                                   "sae.safetensors), metrics.jsonl and checkpoints/; --resume continues an "
                                   "interrupted run exactly.")
    add_dataclass_args(p, FinetuneConfig, aliases={"out_dir": ["--out"]})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saelens_lite.training.finetune import FinetuneConfig, finetune
    from saelens_lite.util.dataclass_args import dataclass_from_args

    cfg = dataclass_from_args(FinetuneConfig, args)
    sae = finetune(cfg)
    print(f"{sae.cfg.hook_name}: fine-tuned {type(sae).__name__} ({cfg.loss}, {cfg.steps * cfg.batch_tokens:,} "
          f"tokens) saved under {cfg.out_dir}")
    return 0
