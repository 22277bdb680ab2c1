"""The portfolio's state: everything ``Portfolio.snapshot()`` stores, keyed by
``InstrumentId`` and, for the model tags' books, by ``StrategyTag``."""

from __future__ import annotations

import msgspec

from contracts.keys import InstrumentId
from services.portfolio.fx import BASE, FxState
from services.portfolio.instruments import Meta
from services.portfolio.positions import Book, Position


class StrategyTag(msgspec.Struct, frozen=True, cache_hash=True, array_like=True, gc=False):
    """One strategy's model tag: the key of that (strategy, model tag)'s book."""

    strategy: str
    model_tag: str


class PortfolioState(msgspec.Struct):
    balances: dict[str, dict[str, float]]
    """account ("" = the default account) -> currency key -> amount."""
    realized: dict[str, float] = msgspec.field(default_factory=lambda: {BASE: 0.0})
    fees: dict[str, float] = msgspec.field(default_factory=lambda: {BASE: 0.0})
    funding: dict[str, float] = msgspec.field(default_factory=dict)
    positions: dict[InstrumentId, Position] = msgspec.field(default_factory=dict)
    marks: dict[InstrumentId, float] = msgspec.field(default_factory=dict)
    base: str = ""
    """the base currency's name ("" until the first market names it)."""
    instruments: dict[InstrumentId, Meta] = msgspec.field(default_factory=dict)
    """``Instrument`` events seen."""
    fx: FxState = msgspec.field(default_factory=FxState)
    strategies: dict[str, Book] = msgspec.field(default_factory=dict)
    tags: dict[StrategyTag, Book] = msgspec.field(default_factory=dict)
    pending_funding: dict[InstrumentId, dict[int, float]] = msgspec.field(default_factory=dict)
    """forecasts not paid yet: instrument -> funding time -> rate."""
    funded: dict[InstrumentId, int] = msgspec.field(default_factory=dict)
    """last funding time paid per instrument (a funding time is paid once)."""
    next_funding: int = 0
    events: int = 0
    """events folded (the snapshot policy counts them)."""
    bars: int = 0
    """bars folded, counted when ``attribution_every`` is set."""
