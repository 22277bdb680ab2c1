"""Domain keys: one type for a market, one for a strategy's book in it.

Workers index their state by these (hashable, hash cached, compact in snapshots as
``[venue, symbol]``), never by strings glued together with separators. ``str()`` is for
people: ``venue|symbol`` and ``strategy|venue|symbol``.
"""

from __future__ import annotations

from collections.abc import Iterable

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


class KeyTable:
    """One key object per market and per book, built on first sight.

    Dict lookups with an interned key hit by identity, and a bar builds no key. ``markets``
    is public so the per-bar path can read ``markets[venue][symbol]`` inline and fall back to
    ``market()`` once per new market.
    """

    __slots__ = ("books", "markets")

    def __init__(self, known: Iterable[InstrumentId | BookId] = ()) -> None:
        self.markets: dict[str, dict[str, InstrumentId]] = {}
        self.books: dict[str, dict[InstrumentId, BookId]] = {}
        for key in known:  # keys already in a restored state stay the ones used
            if isinstance(key, BookId):
                market = self.markets.setdefault(key.venue, {}).setdefault(
                    key.symbol, key.instrument
                )
                self.books.setdefault(key.strategy, {})[market] = key
            else:
                self.markets.setdefault(key.venue, {}).setdefault(key.symbol, key)

    def market(self, venue: str, symbol: str) -> InstrumentId:
        try:
            return self.markets[venue][symbol]
        except KeyError:
            market = self.markets.setdefault(venue, {})[symbol] = InstrumentId(venue, symbol)
            return market

    def book(self, strategy: str, market: InstrumentId) -> BookId:
        try:
            return self.books[strategy][market]
        except KeyError:
            book = self.books.setdefault(strategy, {})[market] = BookId(strategy, market)
            return book
