"""argparse value types shared by every subcommand: ASCII numbers within a stated range."""
from __future__ import annotations

import argparse
import re

MAX_SIZE = 1 << 24  # batch, sequence and chunk sizes beyond this are typos
_ASCII_INT = re.compile(r"^[+]?[0-9]{1,12}$")


def int_in(lo: int, hi: int):
    """argparse type: an ASCII integer in lo..hi (int() alone takes '２' and '1_000')."""
    def parse(text: str) -> int:
        t = text.strip()
        if not _ASCII_INT.match(t) or not lo <= int(t) <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer in {lo}..{hi}, got {text!r}")
        return int(t)
    parse.__name__ = f"integer in {lo}..{hi}"
    return parse


def float_in(lo: float, hi: float, lo_open: bool = True):
    """argparse type: a finite number in (lo, hi] (or [lo, hi] when lo_open is False)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = float("nan")
        ok = (lo < v if lo_open else lo <= v) and v <= hi  # NaN fails both
        if not ok:
            raise argparse.ArgumentTypeError(
                f"expected a number in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {text!r}")
        return v
    parse.__name__ = "number"
    return parse
