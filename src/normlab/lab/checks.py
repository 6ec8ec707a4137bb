"""Declared constraints on the lab's settings: each says what a value must be, in words.

``claims.CHECKS`` holds one per ``BASE`` key and ``claims.RULES`` the few that relate keys;
``check_settings`` applies them to a resolved config before any run, so a setting that would
give a meaningless verdict or crash a worker is one clear line instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Bool", "ListOf", "Number", "OneOf", "Span", "Tagged", "check_settings", "shown"]


def shown(value) -> str:
    """A value as the user would type it after ``--key=``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        if value and all(isinstance(v, list) for v in value):  # spans: lo-hi,lo-hi
            return ",".join("-".join(shown(t) for t in v) for v in value)
        return ",".join(shown(v) for v in value)
    return str(value)


def _g(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Number:
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False

    def ok(self, v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if self.integer and not isinstance(v, int):
            return False
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or not (v >= self.hi if self.hi_open else v > self.hi)

    @property
    def expect(self) -> str:
        what = "an integer" if self.integer else "a finite number"
        if self.lo is not None and self.hi is not None:
            return (f"{what} in {'(' if self.lo_open else '['}{_g(self.lo)}, {_g(self.hi)}"
                    f"{')' if self.hi_open else ']'}")
        if self.lo is not None:
            return f"{what} {'>' if self.lo_open else '>='} {_g(self.lo)}"
        if self.hi is not None:
            return f"{what} {'<' if self.hi_open else '<='} {_g(self.hi)}"
        return what


@dataclass(frozen=True)
class OneOf:
    choices: tuple

    def ok(self, v) -> bool:
        return isinstance(v, str) and v in self.choices

    @property
    def expect(self) -> str:
        return "one of " + ", ".join(self.choices)


@dataclass(frozen=True)
class Tagged:
    """A plain choice, or ``TAG:K`` with an integer K in [1, hi] (e.g. ``ghost:4``)."""

    choices: tuple
    tags: tuple
    hi: int = 4096

    def ok(self, v) -> bool:
        if not isinstance(v, str):
            return False
        if v in self.choices:
            return True
        tag, sep, k = v.partition(":")
        return bool(sep) and tag in self.tags and k.isdigit() and 1 <= int(k) <= self.hi

    @property
    def expect(self) -> str:
        return (f"one of {', '.join(self.choices)}, or "
                f"{' / '.join(t + ':K' for t in self.tags)} with K in [1, {self.hi}]")


@dataclass(frozen=True)
class Bool:
    def ok(self, v) -> bool:
        return isinstance(v, bool)

    expect = "true or false"


@dataclass(frozen=True)
class Span:
    """``[lo, hi]``: integers with 1 <= lo <= hi <= top."""

    top: int = 1000

    def ok(self, v) -> bool:
        return (isinstance(v, list) and len(v) == 2
                and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
                and 1 <= v[0] <= v[1] <= self.top)

    @property
    def expect(self) -> str:
        return f"a span [lo, hi] of integers, 1 <= lo <= hi <= {self.top}"


@dataclass(frozen=True)
class ListOf:
    item: object
    min_len: int = 0
    max_len: int = 16

    def ok(self, v) -> bool:
        return (isinstance(v, list) and self.min_len <= len(v) <= self.max_len
                and all(self.item.ok(t) for t in v))

    @property
    def expect(self) -> str:
        n = (f"{self.min_len} to {self.max_len}" if self.min_len else f"at most {self.max_len}")
        return f"a comma-separated list of {n} items, each {self.item.expect}"


def check_settings(cfg: dict, checks: dict, rules=(), where: str = "",
                   overridden=()) -> str | None:
    """The first problem of ``cfg`` as one line, or None.

    ``checks`` maps a key to its constraint, ``rules`` is a sequence of (keys, predicate,
    expectation) over the whole config; ``where`` prefixes the message (e.g. the claim), and
    keys in ``overridden`` are named as the user's ``--key=value``."""
    def name(key):
        return f"--{key}={shown(cfg[key])}" if key in overridden else f"{key}={shown(cfg[key])}"

    for key, c in checks.items():
        if key in cfg and not c.ok(cfg[key]):
            v = cfg[key]
            got = "an empty list" if v == [] else repr(shown(v))
            return f"{where}{name(key)}: expected {c.expect}, got {got}"
    for keys, predicate, expect in rules:
        if not predicate(cfg):
            got = ", ".join(name(k) for k in keys)
            return f"{where}{expect} (got {got})"
    return None
