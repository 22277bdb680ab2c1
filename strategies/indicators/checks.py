"""Argument checks of the indicator constructors.

The indicators are public building blocks that strategies construct from their own params,
so they check their lengths themselves: msgspec constraints act only when a struct is decoded,
and a bad length would otherwise surface deep inside ``update`` (or never: an EMA of period
0 never warms up). ``__post_init__`` also runs on decode, so a snapshot gets the same check.
"""

from __future__ import annotations

import math


def check_period(owner: str, name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner} {name} must be an integer >= {minimum}, got {value!r}")


def check_positive(owner: str, name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{owner} {name} must be a finite number > 0, got {value!r}")
