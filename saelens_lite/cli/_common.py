"""Pieces shared by the subcommand modules."""

from __future__ import annotations

import argparse
import json


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps descriptions' line breaks."""


def model_help() -> str:
    from saelens_lite.models import ALIASES

    return f"model alias ({', '.join(ALIASES)}), Hugging Face id, local folder or .gguf file"


def parse_options(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs (repeated ``--option``) -> {key: value}, each value parsed as JSON when it
    is (numbers, booleans, lists), else kept as a string."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {pair!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def parse_arch_options(pairs: list[str]) -> dict[str, dict]:
    """``ARCH.KEY=VALUE`` pairs -> {arch: {key: value}} (values parsed as in parse_options)."""
    options: dict[str, dict] = {}
    for key, value in parse_options(pairs).items():
        arch, dot, field = key.partition(".")
        if not dot or not field:
            raise ValueError(f"--option {key}: expected ARCH.KEY=VALUE")
        options.setdefault(arch, {})[field] = value
    return options
