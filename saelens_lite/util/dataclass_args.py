"""Build argparse options from a config dataclass, with each field's docstring as its help.

The config dataclasses document every field with a string literal under it (the convention of
sparsify's configs); this module reads those strings back from the source so that ``--help``
and the dataclass never drift apart.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import sys
import textwrap
import typing


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Map field name -> the docstring written under it in ``cls``'s class body (or in the body
    of the dataclass it inherits the field from)."""
    docs: dict[str, str] = {}
    for base in cls.__mro__[1:]:
        if dataclasses.is_dataclass(base):
            docs = {**field_docs(base), **docs}
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
                       choices: dict[str, typing.Sequence[str]] | None = None,
                       aliases: dict[str, typing.Sequence[str]] | None = None) -> None:
    """Add ``--field-name`` for every field of ``cls`` not in ``skip``; defaults are the
    dataclass defaults, list fields take several values, bool fields become on/off flags,
    ``Literal`` fields take one of their values, optional number fields also ``none``.
    ``aliases`` adds other option strings for a field (e.g. ``{"out_dir": ["--out"]}``)."""
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        hint = field_hint(cls, f)
        # argparse %-formats help strings (for %(default)s): escape literal percent signs.
        kwargs: dict = {"default": default, "help": docs.get(f.name, "").replace("%", "%%"), "dest": f.name}
        if choices and f.name in choices:
            kwargs["choices"] = list(choices[f.name])
        origin = typing.get_origin(hint)
        if origin is typing.Literal:  # the choices are the Literal's values
            kwargs.setdefault("choices", list(typing.get_args(hint)))
            kwargs["type"] = type(typing.get_args(hint)[0])
        elif hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is list:
            kwargs["nargs"] = "+"
            kwargs["type"] = typing.get_args(hint)[0]
        elif origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            inner = [a for a in typing.get_args(hint) if a is not type(None)]
            optional = len(inner) < len(typing.get_args(hint))
            kwargs["type"] = _none_or(inner[0]) if optional and inner[0] is not str else inner[0]
        else:
            kwargs["type"] = hint
        names = ["--" + f.name.replace("_", "-"), *((aliases or {}).get(f.name, ()))]
        parser.add_argument(*names, **kwargs)


def _none_or(kind: type):
    """An argparse type for an optional number field: ``none`` gives None (the field's off
    value, e.g. ``--outlier-norm-ratio none``), anything else ``kind(text)``."""
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)
    parse.__name__ = kind.__name__  # argparse's "invalid float value: 'x'"
    return parse


def field_hint(cls: type, f: dataclasses.Field):
    """A field's type, its string annotation evaluated in the class's module (per field, so that
    a skipped field may name a type imported only for type checkers, e.g. TrainConfig.sae)."""
    if not isinstance(f.type, str):
        return f.type
    return eval(f.type, vars(sys.modules[cls.__module__]))  # noqa: S307  (our own annotations)


def dataclass_from_args(cls: type, args: argparse.Namespace, **overrides):
    """Instantiate ``cls`` from the parsed options (fields missing from ``args`` keep defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)
