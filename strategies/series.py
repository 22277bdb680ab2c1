"""A strategy's per-series state: one record per (venue, symbol, interval).

The records live in the strategy's state under ``"venue|symbol|interval"`` (the key its
snapshot carries) and are cached by the ``(venue, symbol, interval)`` tuple, so every bar
after a series' first finds its record without building the key string.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

Ident = tuple[str, str, str]
"""(venue, symbol, interval)"""

S = TypeVar("S")


def stored_series(stored: dict[str, S], ident: Ident, fresh: Callable[[], S]) -> S:
    """The record of ``ident``: the stored one (say, restored from a snapshot), else a new one
    from ``fresh``, stored."""
    key = "|".join(ident)
    series = stored.get(key)
    if series is None:
        series = stored[key] = fresh()
    return series


def series_for(
    stored: dict[str, S], cache: dict[Ident, S], ident: Ident, fresh: Callable[[], S]
) -> S:
    """``stored_series``, cached by ``ident`` (clear ``cache`` on restore)."""
    series = cache[ident] = stored_series(stored, ident, fresh)
    return series
