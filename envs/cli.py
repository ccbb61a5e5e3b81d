"""Typed argparse helpers shared by every command line of the project (on the lowest floor, ``envs``, so the
CLIs of every floor import the same ones).

Pass them as ``type=`` so a bad value is an argparse error naming the flag (``argument --batch-size: must be an
integer >= 1, got '0'``), raised before anything loads::

    p.add_argument("--batch-size", type=positive_int, default=2)
    p.add_argument("--lr", type=positive_float, default=3e-6)
    p.add_argument("--eval-fraction", type=unit_interval(closed_right=False), default=0.0)

Every float helper refuses NaN and +-inf.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

__all__ = [
    "error_exit",
    "finite_float",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "unit_interval",
]


def _int(text: str, minimum: int, what: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int(text, 1, "an integer >= 1")


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _int(text, 0, "an integer >= 0")


def finite_float(text: str) -> float:
    """Any finite float (no NaN, no inf)."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite float > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite float >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def unit_interval(closed_right: bool = True) -> Callable[[str], float]:
    """A float in ``[0, 1]`` (``closed_right=False``: ``[0, 1)``), e.g. a fraction or a dropout rate."""
    bracket = "]" if closed_right else ")"

    def parse(text: str) -> float:
        value = finite_float(text)
        if value < 0 or value > 1 or (value == 1 and not closed_right):
            raise argparse.ArgumentTypeError(f"must be a number in [0, 1{bracket}, got {text!r}")
        return value

    parse.__name__ = f"number in [0, 1{bracket}"  # argparse names the type in "invalid <name> value" messages
    return parse


def error_exit(prog: str, exc: BaseException) -> int:
    """Report a user-facing failure (a data folder that is not there, an engine that is not installed) as one line
    on stderr, ``<prog>: error: <message>``, without a traceback; return 2, argparse's status for bad input."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2
