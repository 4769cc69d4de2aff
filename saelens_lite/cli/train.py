"""``saelens-lite train``: train SAEs."""

from __future__ import annotations

import argparse

from saelens_lite.cli._common import Formatter, arch_options_help, parse_options
from saelens_lite.util.dataclass_args import add_dataclass_args, dataclass_from_args


def add(sub) -> None:
    from saelens_lite.saes.config import B_DEC_INITS
    from saelens_lite.training.config import TrainConfig
    from saelens_lite.training.sae_flags import SAEFlags, architectures

    p = sub.add_parser("train", help="train sparse autoencoders", formatter_class=Formatter,
                       description="Train one SAE per hook from an activation cache (--activations DIR), an "
                                   ".npy/.safetensors file of shape (N, D) (--activations FILE) or streamed from a "
                                   "model (--model M --dataset D). Each SAE is saved as RUN_DIR/<hook>/ with cfg.json "
                                   "and sae.safetensors. --resume continues an interrupted run. Under torchrun the ranks "
                                   "train data parallel, or with --distribute-hooks each rank trains its "
                                   "share of the hooks on whole batches (each rank prints its own hooks). "
                                   "Transcoders for every layer from one forward per batch: --hooks "
                                   "'blocks.*.hook_mlp_in' --target-hook 'blocks.*.hook_mlp_out' ([0-3] instead of * "
                                   "for some blocks).",
                       epilog=arch_options_help())
    # the flat SAE flags (SAEFlags) map onto TrainConfig.sae in `config_from_args`
    add_dataclass_args(p, SAEFlags, skip=("sae_options",), aliases={"architecture": ["--arch"]},
                       choices={"architecture": architectures(), "b_dec_init": B_DEC_INITS})
    add_dataclass_args(p, TrainConfig, skip=("sae",), aliases={"hooks": ["--hook"], "out_dir": ["--out"]})
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="further SAEConfig field of the architecture (repeatable), e.g. --option aux_coeff=0.05 or --option select_dtype=bfloat16")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The TrainConfig of the parsed flags: the SAE flags and ``--option`` nested as ``sae``."""
    from saelens_lite.training import TrainConfig
    from saelens_lite.training.sae_flags import SAEFlags

    flags = dataclass_from_args(SAEFlags, args, sae_options=parse_options(args.option))
    return dataclass_from_args(TrainConfig, args, sae=flags.sae_config())


def run(args: argparse.Namespace) -> int:
    from saelens_lite.training import train

    cfg = config_from_args(args)
    result = train(cfg)
    saes = result if isinstance(result, dict) else {result.cfg.hook_name or "activations": result}
    for hook, sae in saes.items():
        print(f"{hook}: {type(sae).__name__} d_in={sae.cfg.d_in} d_sae={sae.cfg.d_sae} saved under {cfg.out_dir}")
    return 0
