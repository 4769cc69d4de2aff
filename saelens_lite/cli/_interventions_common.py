"""Options, loading and printing shared by the intervention subcommands (``steer``, ``ablate``,
``attribute``): :func:`add_splice_args`, :func:`load_model_and_saes`, :func:`feature_edits`,
:func:`site_stats`, :func:`print_generation`...
"""

from __future__ import annotations

import argparse
import json

from saelens_lite.cli._common import model_help


def add_splice_args(p: argparse.ArgumentParser) -> None:
    """--model, --sae (repeatable), --device, --exclude, --json."""
    from saelens_lite.lm.tokens import DEFAULT_EXCLUDE, EXCLUDE_CHOICES

    p.add_argument("--model", required=True, help=model_help())
    p.add_argument("--sae", required=True, action="append", metavar="SAE_DIR",
                   help="SAE folder (cfg.json + sae.safetensors, e.g. RUN/HOOK of a training run), spliced "
                        "at its hook with the error term kept, so an unedited SAE changes nothing; repeat "
                        "for several SAEs (one per hook)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--exclude", choices=EXCLUDE_CHOICES, default=DEFAULT_EXCLUDE,
                   help="tokens where no SAE is spliced (they keep their clean activation and are never "
                        "edited); special = bos, eos, pad, sep, as harvest and eval")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (the Python API's to_dict()) instead of text")


def add_feature_args(p: argparse.ArgumentParser, verb: str) -> None:
    """--feature (repeatable), --positions."""
    p.add_argument("--feature", required=True, action="append", metavar="[HOOK:]F",
                   help=f"feature index to {verb}; repeat for several; HOOK:F names the SAE when several "
                        "are spliced")
    p.add_argument("--positions", type=int, nargs="+", default=None, metavar="P",
                   help="token positions to edit (0 = the first token, BOS included; prompt and generated "
                        "tokens alike); default: every position")


def add_generation_args(p: argparse.ArgumentParser, *, prompt_required: bool) -> None:
    """--prompt (repeatable), --max-new-tokens, --temperature, --top-k, --seed."""
    p.add_argument("--prompt", action="append", required=prompt_required,
                   help="prompt to continue; repeat for a batch")
    p.add_argument("--max-new-tokens", type=int, default=30, help="tokens to generate per prompt")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0: greedy; > 0: sample from softmax(logits / T) seeded by --seed (the baseline and "
                        "the edited run draw the same random stream)")
    p.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely tokens")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (unused when greedy)")


def load_model_and_saes(args: argparse.Namespace):
    """(LoadedModel, {hook: SAE}) from --model, --sae and --device."""
    from saelens_lite.interventions.splice import as_sae_map
    from saelens_lite.lm.load import load_model
    from saelens_lite.saes import SAE
    from saelens_lite.saes.base import require_sparse_coder

    saes = [SAE.load(path, device=args.device).eval() for path in args.sae]
    for path, sae in zip(args.sae, saes):
        require_sparse_coder(sae, f"--sae {path}: interventions")
    sae_map = as_sae_map(saes)
    return load_model(args.model, device=args.device), sae_map


def parse_feature(text: str) -> tuple[str | None, int]:
    """``F`` or ``HOOK:F`` -> (hook or None, F)."""
    hook, _, index = text.rpartition(":")
    try:
        return hook or None, int(index)
    except ValueError:
        raise ValueError(f"--feature {text!r} is not a feature index: give F or HOOK:F with F an integer "
                         ">= 0") from None


def feature_edits(args: argparse.Namespace, make) -> list:
    """One edit per --feature: ``make(feature, hook=, positions=)``."""
    return [make(f, hook=h, positions=args.positions) for h, f in map(parse_feature, args.feature)]


def site_stats(args: argparse.Namespace, saes: dict) -> dict | None:
    """--dashboard sites -> {hook: SiteStats}, each matched to the spliced SAE at its hook."""
    from saelens_lite.interventions import load_site_stats

    if not args.dashboard:
        return None
    stats = {}
    for site in args.dashboard:
        st = load_site_stats(site)
        if st.hook not in saes:
            raise ValueError(f"--dashboard {site} describes an SAE at {st.hook!r}, where no --sae is spliced; "
                             f"spliced hooks: {list(saes)}")
        if st.hook in stats:
            raise ValueError(f"two --dashboard sites for hook {st.hook!r}: give one per SAE")
        stats[st.hook] = st
    return stats


def quoted(text: str | None) -> str:
    """A continuation on one line: quotes, escaped newlines."""
    return "-" if text is None else json.dumps(text, ensure_ascii=False)


def describe_edit(b: dict, stats: dict | None) -> str:
    """One line per bound edit (``BoundEdit.describe()``), saying the unit of its value."""
    where = "all positions" if b["positions"] is None else f"positions {b['positions']}"
    head = f"{b['kind']} feature {b['feature']} at {b['hook']} ({where})"
    if b["kind"] == "ablate":
        return head
    if b["unit"] == "max_activation":
        site = stats[b["hook"]].site
        return (f"{head}: strength {b['value']:g} in units of the feature's max activation "
                f"({b['code_value'] / b['value']:.4g} in {site}), code {b['code_value']:+.4g}")
    if b["unit"] == "unit_direction":
        return (f"{head}: strength {b['value']:g} in raw units of the unit-norm decoder direction "
                "(no --dashboard: no max activation to scale by)")
    verb = "set to" if b["kind"] == "clamp" else "multiplied by"
    return f"{head}: code {verb} {b['value']:g}"


def print_generation(d: dict, stats: dict | None, edited_label: str) -> None:
    for b in d["edits"]:
        print("edit: " + describe_edit(b, stats))
    how = ("greedy" if d["temperature"] == 0 else
           f"sampled at temperature {d['temperature']:g}, seed {d['seed']}")
    print(f"decoding: {how}, up to {d['max_new_tokens']} new tokens")
    width = max(len("baseline"), len(edited_label)) + 1
    for c in d["continuations"]:
        print(f"\nprompt: {quoted(c['prompt'])}")
        print(f"  {'baseline:':<{width}} {quoted(c['baseline'])}")
        print(f"  {edited_label + ':':<{width}} {quoted(c['edited'])}")
