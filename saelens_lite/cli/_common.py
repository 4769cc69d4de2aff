"""Pieces shared by the subcommand modules."""

from __future__ import annotations

import argparse
import json


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps descriptions' line breaks."""


def model_help() -> str:
    from saelens_lite.lm.names import ALIAS_NAMES

    return f"model alias ({', '.join(ALIAS_NAMES)}), Hugging Face id, local folder or .gguf file"


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


def arch_options_help(form: str = "KEY=VALUE", width: int = 100) -> str:
    """The architectures' own config fields (what ``--option KEY=VALUE`` sets), generated from
    the config dataclasses: one block per config class below SAEConfig, naming the
    architectures that use it, each field with its default and the first sentence of its doc."""
    import dataclasses
    import re
    import textwrap

    from saelens_lite.saes.config import SAEConfig, architectures, config_class
    from saelens_lite.util.dataclass_args import field_docs

    users: dict[type, list[str]] = {}
    for arch in architectures():
        for cls in config_class(arch).__mro__:
            if isinstance(cls, type) and issubclass(cls, SAEConfig) and cls is not SAEConfig:
                users.setdefault(cls, []).append(arch)
    lines = [f"architecture options (--option {form}, JSON values; each architecture takes its "
             "config's fields and those of the configs it extends):"]
    for cls, archs in users.items():
        defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                    for f in dataclasses.fields(cls)}
        own = [n for n in field_docs(cls) if n != "architecture" and n in defaults]
        if not own:
            continue
        lines.append(f"  {cls.__name__} ({', '.join(archs)}):")
        for name in own:
            doc = re.split(r"(?<!\bal)(?<!App)(?<!Sec)\.\s+(?=[A-Z(])", field_docs(cls)[name])[0].rstrip(".")
            lines.append(textwrap.fill(f"{name}={json.dumps(defaults[name])}: {doc}", width,
                                       initial_indent="    ", subsequent_indent="      "))
    return "\n".join(lines)
