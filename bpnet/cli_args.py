"""Argument types for the ``bpnet`` command line: each checks one value and says what is wrong.

Each is an ``argparse`` ``type=``: it returns the parsed value or raises
``argparse.ArgumentTypeError``, which argparse turns into a one-line usage
error (exit code 2, no traceback).  :func:`did_you_mean` is shared with the
lab's scenario names.
"""
from __future__ import annotations

import argparse
import difflib
import os


class HelpFormatter(argparse.HelpFormatter):
    """Help that ends each valued flag's text with its default; switches and absent defaults get none."""

    def __init__(self, prog, **kwargs):
        kwargs.setdefault("max_help_position", 32)
        super().__init__(prog, **kwargs)

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or action.nargs == 0 or "%(default)" in text
                or action.default is None or action.default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def did_you_mean(name: str, options) -> str:
    """``"; did you mean 'dying_relu'?"`` for the closest of ``options``, or ``""``.

    A prefix of exactly one option counts as close (``dying`` -> ``dying_relu``)
    even where difflib's ratio would not.
    """
    options = list(options)
    prefixed = [o for o in options if o.startswith(name)] if name else []
    close = prefixed if len(prefixed) == 1 else difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def choice(kind: str, options):
    """A type accepting one of ``options`` (case-insensitive), suggesting the nearest on a typo."""
    options = tuple(options)

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value in options:
            return value
        raise argparse.ArgumentTypeError(f"unknown {kind} {text!r}{did_you_mean(value, options)} "
                                         f"(choose from {', '.join(options)})")
    parse.__name__ = kind             # argparse names the type in some messages
    return parse


def _whole_at_least(text: str, minimum: int, bound: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r}: must be {bound}")
    return value


def positive_int(text: str) -> int:
    return _whole_at_least(text, 1, "at least 1")


def non_negative_int(text: str) -> int:
    return _whole_at_least(text, 0, "0 or more")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number above 0")
    return value


def fraction(low_inclusive: bool):
    """A type for a fraction in ``[0, 1)`` (``low_inclusive``) or ``(0, 1)``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        ok = (0.0 <= value if low_inclusive else 0.0 < value) and value < 1.0
        if not ok:
            interval = "[0, 1)" if low_inclusive else "(0, 1)"
            raise argparse.ArgumentTypeError(f"{text!r}: must be a fraction in {interval}, e.g. 0.2")
        return value
    parse.__name__ = "fraction"
    return parse


def hidden_sizes(text: str) -> tuple:
    """``"128,64"`` -> ``(128, 64)``; ``"none"`` -> ``()`` (no hidden layer); anything else is refused."""
    spec = str(text).strip().lower()
    if spec == "none":
        return ()
    parts = spec.replace(" ", "").split(",")
    if not spec or not all(p.isdigit() and int(p) > 0 for p in parts):
        hint = "it is empty" if not spec else "layer sizes must be positive integers"
        raise argparse.ArgumentTypeError(f"{text!r}: {hint}; give them comma separated, e.g. 128,64 "
                                         "(or 'none' for no hidden layer)")
    return tuple(int(p) for p in parts)


def output_path(text: str) -> str:
    """A file to write at the end: its folder must exist and be writable now, not after the run."""
    path = os.path.expanduser(text)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file name inside it")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"{text!r}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: the folder {folder} is not writable")
    return path


__all__ = ["HelpFormatter", "did_you_mean", "choice", "positive_int", "non_negative_int", "positive_float", "fraction",
           "hidden_sizes", "output_path"]
