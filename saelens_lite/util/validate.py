"""Validation shared by the config dataclasses: errors name the field, the value and what is
allowed."""

from __future__ import annotations


def check_ints(config, names, *, minimum: int) -> None:
    """Each field in ``names`` of ``config`` must be an int (not a bool) >= ``minimum``."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{type(config).__name__}.{name}={value!r}: must be an integer >= {minimum}")
