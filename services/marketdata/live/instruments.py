"""A venue's markets as Keel sees them: which symbols to stream, and what to publish about them.

ccxt's market dicts are converted once, at the edge, into frozen ``VenueMarket`` structs, so
everything after that is typed and ccxt-free. Keel trades spot and linear perpetuals; dated
futures, options and inverse contracts are refused with a reason rather than half-supported.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Literal

import msgspec

from contracts.events import Instrument, InstrumentKind

DECIMAL_PLACES = 2
SIGNIFICANT_DIGITS = 3
TICK_SIZE = 4
"""ccxt's precision modes (``ccxt.base.decimal_to_precision``), kept here so this module
needs no ccxt import: how a market's ``precision`` numbers are meant."""

Universe = Literal["", "usdt_perpetuals"]


class MalformedMarket(ValueError):
    """A market dict ccxt returned that cannot be read, in one line naming symbol and field."""


class VenueMarket(msgspec.Struct, frozen=True):
    """One market of a venue, with ccxt's loose fields made definite: ``tick_size`` and
    ``lot_size`` in price and amount units (0 = the venue gives none), ``kind`` None when
    Keel does not support the market (``refusal`` says why)."""

    symbol: str
    base: str
    quote: str
    settle: str = ""
    type: str = "spot"
    linear: bool = False
    inverse: bool = False
    active: bool = True
    tick_size: float = 0.0
    lot_size: float = 0.0
    min_notional: float = 0.0
    contract_size: float = 1.0
    max_leverage: float = 0.0

    @classmethod
    def from_ccxt(cls, market: Mapping[str, Any], precision_mode: int) -> VenueMarket:
        """A ccxt unified market; ``precision_mode`` is the exchange's ``precisionMode``."""
        if not isinstance(market, Mapping):
            raise MalformedMarket(f"market is a {type(market).__name__}, not a mapping")
        symbol = _text(market, "symbol", "?", required=True)
        precision = _table(market, "precision", symbol)
        limits = _table(market, "limits", symbol)
        contract_size = _number(market.get("contractSize"), symbol, "contractSize") or 1.0
        return cls(
            symbol=symbol,
            base=_text(market, "base", symbol, required=True),
            quote=_text(market, "quote", symbol, required=True),
            settle=_text(market, "settle", symbol),
            type=_text(market, "type", symbol) or "spot",
            linear=market.get("linear") is True,
            inverse=market.get("inverse") is True,
            active=market.get("active") is not False,
            tick_size=_step(precision.get("price"), precision_mode, symbol, "precision.price"),
            lot_size=_step(precision.get("amount"), precision_mode, symbol, "precision.amount"),
            min_notional=_limit(limits, "cost", "min", symbol),
            contract_size=contract_size,
            max_leverage=_limit(limits, "leverage", "max", symbol),
        )

    @property
    def kind(self) -> InstrumentKind | None:
        if self.type == "spot":
            return "spot"
        if self.type == "swap" and not self.inverse:
            return "perpetual"
        return None

    @property
    def refusal(self) -> str:
        """Why Keel does not support this market; empty when it does."""
        if self.kind is not None:
            return ""
        if self.type == "swap":
            return "inverse perpetuals are not supported yet"
        if self.type == "future":
            return "dated futures are not supported yet"
        if self.type == "option":
            return "options are not supported"
        return f"market type {self.type!r} is not supported"

    @property
    def usdt_perpetual(self) -> bool:
        """An active linear perpetual quoted and settled in USDT (the ``usdt_perpetuals``
        universe)."""
        return (
            self.active
            and self.type == "swap"
            and self.linear
            and not self.inverse
            and self.quote == "USDT"
            and self.settle == "USDT"
        )


def venue_markets(
    markets: Mapping[str, Mapping[str, Any]], precision_mode: int
) -> tuple[dict[str, VenueMarket], tuple[str, ...]]:
    """Every market ccxt loaded, converted; the second item gives one line per market that
    could not be read (so one odd market never stops the rest)."""
    converted: dict[str, VenueMarket] = {}
    problems: list[str] = []
    for market in markets.values():
        try:
            venue_market = VenueMarket.from_ccxt(market, precision_mode)
        except MalformedMarket as exc:
            problems.append(str(exc))
            continue
        converted[venue_market.symbol] = venue_market
    return converted, tuple(problems)


def instrument_of(venue: str, market: VenueMarket, ts: int) -> Instrument:
    """The Instrument event for a supported market (``ValueError`` for one Keel refuses)."""
    kind = market.kind
    if kind is None:
        raise ValueError(f"{market.symbol}: {market.refusal}")
    return Instrument(
        ts=ts,
        venue=venue,
        symbol=market.symbol,
        base=market.base,
        quote=market.quote,
        kind=kind,
        tick_size=market.tick_size,
        lot_size=market.lot_size,
        min_notional=market.min_notional,
        contract_size=market.contract_size,
        max_leverage=market.max_leverage,
        settle=market.settle if kind == "perpetual" else "",
        active=market.active,
    )


class Selection(msgspec.Struct, frozen=True):
    """What a configuration asks of a venue: ``markets`` to stream (active, supported, in
    the configured order, or sorted for a universe), ``inactive`` ones the venue lists but
    no longer trades, ``unknown`` symbols the venue does not list and ``unsupported``
    (symbol, reason) pairs."""

    markets: tuple[VenueMarket, ...] = ()
    inactive: tuple[VenueMarket, ...] = ()
    unknown: tuple[str, ...] = ()
    unsupported: tuple[tuple[str, str], ...] = ()

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(m.symbol for m in self.markets)

    @property
    def ok(self) -> bool:
        """Every configured symbol can be streamed."""
        return not (self.inactive or self.unknown or self.unsupported)

    def problems(self) -> tuple[str, ...]:
        """One line per symbol that cannot be streamed."""
        return (
            tuple(f"{s}: the venue does not list it" for s in self.unknown)
            + tuple(f"{s}: {reason}" for s, reason in self.unsupported)
            + tuple(f"{m.symbol}: the venue no longer trades it" for m in self.inactive)
        )


def select_symbols(
    markets: Mapping[str, VenueMarket], symbols: Iterable[str], universe: Universe = ""
) -> Selection:
    """The configured ``symbols`` (exact ccxt unified symbols, e.g. ``BTC/USDT:USDT``), or
    with ``universe="usdt_perpetuals"`` every active linear USDT perpetual, sorted (the
    configured symbols are then not used)."""
    if universe == "usdt_perpetuals":
        chosen = sorted(m.symbol for m in markets.values() if m.usdt_perpetual)
        return Selection(markets=tuple(markets[s] for s in chosen))
    if universe:
        raise ValueError(f"universe {universe!r}: expected '' or 'usdt_perpetuals'")
    streamable: list[VenueMarket] = []
    inactive: list[VenueMarket] = []
    unknown: list[str] = []
    unsupported: list[tuple[str, str]] = []
    for symbol in dict.fromkeys(symbols):
        market = markets.get(symbol)
        if market is None:
            unknown.append(symbol)
        elif market.kind is None:
            unsupported.append((symbol, market.refusal))
        elif not market.active:
            inactive.append(market)
        else:
            streamable.append(market)
    return Selection(
        markets=tuple(streamable),
        inactive=tuple(inactive),
        unknown=tuple(unknown),
        unsupported=tuple(unsupported),
    )


class InstrumentBook:
    """The Instruments last published for a venue, so only changes become new events.

    Seeded with the last stored Instrument per symbol, it turns each reading of the venue's
    markets into the events to publish: a new symbol, a changed field (tick size, lot
    size...), and a symbol that went inactive or vanished from the listing, reported once as
    ``active=False`` (a delisting is a fact, never a silent drop)."""

    def __init__(self, seed: Iterable[Instrument] = ()) -> None:
        self._last: dict[str, Instrument] = {}
        for instrument in seed:
            self._last[instrument.symbol] = instrument

    def get(self, symbol: str) -> Instrument | None:
        return self._last.get(symbol)

    @property
    def symbols(self) -> Collection[str]:
        return self._last.keys()

    def update(self, instruments: Iterable[Instrument], ts: int) -> list[Instrument]:
        """What to publish given the venue's current ``instruments`` (every tracked symbol
        the venue still lists, active or not); a known symbol missing from them vanished."""
        changed: list[Instrument] = []
        seen: set[str] = set()
        for instrument in instruments:
            seen.add(instrument.symbol)
            last = self._last.get(instrument.symbol)
            if last is None or _content(last) != _content(instrument):
                self._last[instrument.symbol] = instrument
                changed.append(instrument)
        for symbol, last in list(self._last.items()):
            if symbol not in seen and last.active:
                gone = msgspec.structs.replace(last, ts=ts, active=False)
                self._last[symbol] = gone
                changed.append(gone)
        return changed


def _content(instrument: Instrument) -> tuple[Any, ...]:
    return msgspec.structs.astuple(msgspec.structs.replace(instrument, ts=0))


def _text(market: Mapping[str, Any], field: str, symbol: str, *, required: bool = False) -> str:
    value = market.get(field)
    if value is None or value == "":
        if required:
            raise MalformedMarket(f"market {symbol}: {field} is missing")
        return ""
    if not isinstance(value, str):
        raise MalformedMarket(f"market {symbol}: {field} is {value!r}, not text")
    return value


def _table(market: Mapping[str, Any], field: str, symbol: str) -> Mapping[str, Any]:
    value = market.get(field)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedMarket(f"market {symbol}: {field} is {value!r}, not a table")
    return value


def _number(value: Any, symbol: str, field: str) -> float:
    """A non-negative finite number; None (ccxt's "not given") is 0."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise MalformedMarket(f"market {symbol}: {field} is {value!r}, not a number")
    try:
        number = float(value)
    except ValueError:
        raise MalformedMarket(f"market {symbol}: {field} is {value!r}, not a number") from None
    if not math.isfinite(number) or number < 0:
        raise MalformedMarket(f"market {symbol}: {field} is {value!r}, not a number >= 0")
    return number


def _step(value: Any, precision_mode: int, symbol: str, field: str) -> float:
    """A price or amount step from ccxt's precision: the step itself in TICK_SIZE mode, a
    count of decimals in DECIMAL_PLACES mode (written as ``1e-N`` so ``2`` gives exactly
    0.01); SIGNIFICANT_DIGITS has no fixed step (it depends on the price): 0."""
    if value is None or precision_mode == SIGNIFICANT_DIGITS:
        return 0.0
    if precision_mode == TICK_SIZE:
        return _number(value, symbol, field)
    if precision_mode != DECIMAL_PLACES:
        raise ValueError(f"precision mode {precision_mode!r}: expected 2, 3 or 4")
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not float(value).is_integer()
    ):
        raise MalformedMarket(f"market {symbol}: {field} is {value!r}, not a count of decimals")
    return float(f"1e{-int(value)}")


def _limit(limits: Mapping[str, Any], name: str, bound: str, symbol: str) -> float:
    table = limits.get(name)
    if table is None:
        return 0.0
    if not isinstance(table, Mapping):
        raise MalformedMarket(f"market {symbol}: limits.{name} is {table!r}, not a table")
    return _number(table.get(bound), symbol, f"limits.{name}.{bound}")
