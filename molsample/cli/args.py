"""Argument types of the command line: one-line errors, positive numbers, step schedules, per-angle values."""
from __future__ import annotations

import argparse
import math


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2) instead of the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _integer(text: str) -> int:
    """An integer, also written as 1e8 or 100_000."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise
        return int(value)


def _number(kind, test, words):
    def parse(text: str):
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a number' if kind is float else 'an integer'}") from None
        if not (math.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"{text} is not {words}")
        return value
    parse.__name__ = words
    return parse


positive_int = _number(_integer, lambda v: v >= 1, "a positive integer")


nonnegative_int = _number(_integer, lambda v: v >= 0, "an integer >= 0")


positive_float = _number(float, lambda v: v > 0, "a positive number")


nonnegative_float = _number(float, lambda v: v >= 0, "a number >= 0")


def _steps_arg(text: str):
    import argparse

    from ..sampler import parse_steps
    try:
        return parse_steps(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _per_angle_arg(text: str, flag: str, cast):
    """'36' or '30,18' (one value per restrained angle) -> a number or a tuple."""
    try:
        vals = [cast(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"{flag} takes a number or comma-separated numbers (one per restrained angle), got {text!r}")
    return vals[0] if len(vals) == 1 else tuple(vals)
