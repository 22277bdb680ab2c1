"""Domain keys: one type for a market, one for a strategy's book in it.

Workers index their state by these (hashable, hash cached, compact in snapshots as
``[venue, symbol]``), never by strings glued together with separators. ``str()`` is for
people: ``venue|symbol`` and ``strategy|venue|symbol``.
"""

from __future__ import annotations

import msgspec


class InstrumentId(msgspec.Struct, frozen=True, cache_hash=True, array_like=True, gc=False):
    """A market: the venue's subject token and the venue's own symbol (``BTC/USDT:USDT``)."""

    venue: str
    symbol: str

    def __str__(self) -> str:
        return f"{self.venue}|{self.symbol}"


class BookId(msgspec.Struct, frozen=True, cache_hash=True, array_like=True, gc=False):
    """One strategy's position in one market."""

    strategy: str
    instrument: InstrumentId

    @property
    def venue(self) -> str:
        return self.instrument.venue

    @property
    def symbol(self) -> str:
        return self.instrument.symbol

    def __str__(self) -> str:
        return f"{self.strategy}|{self.instrument}"
