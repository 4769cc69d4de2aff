"""Pieces shared by the subcommand modules."""

from __future__ import annotations

import argparse


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps descriptions' line breaks."""


def model_help() -> str:
    from saelens_lite.models import ALIASES

    return f"model alias ({', '.join(ALIASES)}), Hugging Face id, local folder or .gguf file"
