"""What the portfolio knows of an instrument: its kind, the asset it trades, the currency its
prices, PnL and margin are in, the contract size and the venue's leverage cap.

Sources, most authoritative first: an ``Instrument`` event (``md.instrument.*``), a
``[[instruments]]`` entry of the config, the symbol itself in ccxt form: ``BTC/USDT`` is spot
BTC quoted in USDT, ``BTC/USDT:USDT`` a perpetual settled in USDT, and a symbol without a
slash (``ORCL``) is quoted in the portfolio's base currency.

Perpetuals and futures are **margined**, booked as **linear** contracts: PnL and margin in
the quote currency, ``contract_size`` units of the base asset per contract (an IB future's
multiplier); perpetuals also pay funding, futures never. Stocks and FX pairs are bought
outright, like spot. Inverse contracts (``BTC/USD:BTC``, settled in the base asset) are not
modelled (docs/portfolio.md).
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from contracts.events import InstrumentKind


class Meta(msgspec.Struct, frozen=True):
    """An instrument's terms. ``quote`` is the currency name as given; empty means the
    portfolio's base currency (a symbol without a quote, e.g. an equity ticker)."""

    kind: InstrumentKind = "spot"
    base: str = ""
    quote: str = ""
    contract_size: float = 1.0
    max_leverage: float = 0.0

    @property
    def perpetual(self) -> bool:
        """Funding is paid on it."""
        return self.kind == "perpetual"

    @property
    def margined(self) -> bool:
        """Only its PnL moves cash (a perpetual or a future), not its notional."""
        return self.kind in ("perpetual", "future")


class Described(Protocol):
    """An ``Instrument`` event or an ``[[instruments]]`` entry."""

    symbol: str
    base: str
    quote: str
    kind: InstrumentKind


def split_symbol(symbol: str) -> tuple[str, str, bool]:
    """``BTC/USDT`` -> (BTC, USDT, False); ``BTC/USDT:USDT`` -> (BTC, USDT, True);
    ``ORCL`` -> (ORCL, "", False)."""
    base, slash, rest = symbol.partition("/")
    if not slash:
        return symbol, "", False
    quote, colon, _settle = rest.partition(":")
    return base, quote, bool(colon)


def from_symbol(symbol: str) -> Meta:
    base, quote, perpetual = split_symbol(symbol)
    return Meta(kind="perpetual" if perpetual else "spot", base=base, quote=quote)


def from_description(spec: Described) -> Meta:
    """An ``Instrument`` event or an ``[[instruments]]`` entry; the symbol fills what it
    leaves empty, and a ``:SETTLE`` symbol is a perpetual whatever ``kind`` says."""
    base, quote, perpetual = split_symbol(spec.symbol)
    kind: InstrumentKind = "perpetual" if perpetual else spec.kind
    return Meta(
        kind=kind,
        base=spec.base or base,
        quote=spec.quote or quote,
        contract_size=getattr(spec, "contract_size", 1.0) or 1.0,
        max_leverage=getattr(spec, "max_leverage", 0.0) or 0.0,
    )
