"""ccxt's trade, ticker and funding-rate dicts as Keel events, converted at the edge.

Each returns the event or raises ``MalformedFrame`` naming the field, so a bad frame is one
dead letter with its reason. ccxt gives times in ms; events carry ns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from contracts.events import FundingRate, Quote, Trade
from services.marketdata.live.candles import MalformedFrame

_MS = 1_000_000
_HOUR_MS = 3_600_000


def _ms(value: Any, what: str, default_ns: int = 0) -> int:
    if value is None and default_ns:
        return default_ns
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MalformedFrame(f"{what} {value!r} is not a time in ms")
    if value <= 0:
        raise MalformedFrame(f"{what} {value!r} is not after the epoch")
    return int(value) * _MS


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MalformedFrame(f"{what} {value!r} is not a number")
    return float(value)


def trade_of(venue: str, symbol: str, trade: Mapping[str, Any]) -> Trade:
    side = trade.get("side")
    price = _number(trade.get("price"), "trade price")
    qty = _number(trade.get("amount"), "trade amount")
    if price <= 0 or qty <= 0:
        raise MalformedFrame(f"trade price {price!r} and amount {qty!r} must be > 0")
    return Trade(
        ts=_ms(trade.get("timestamp"), "trade timestamp"),
        venue=venue,
        symbol=symbol,
        price=price,
        qty=qty,
        side="sell" if side == "sell" else "buy",
        trade_id=str(trade.get("id") or ""),
    )


def quote_of(venue: str, symbol: str, ticker: Mapping[str, Any], now_ns: int) -> Quote:
    """The best bid/ask; a venue that sends no time (Binance's book ticker) gets ``now_ns``."""
    bid = _number(ticker.get("bid"), "bid")
    ask = _number(ticker.get("ask"), "ask")
    if not 0 < bid <= ask:
        raise MalformedFrame(f"bid {bid!r} and ask {ask!r}: need 0 < bid <= ask")
    return Quote(
        ts=_ms(ticker.get("timestamp"), "quote timestamp", now_ns),
        venue=venue,
        symbol=symbol,
        bid=bid,
        ask=ask,
        bid_size=max(0.0, _number(ticker.get("bidVolume") or 0.0, "bid size")),
        ask_size=max(0.0, _number(ticker.get("askVolume") or 0.0, "ask size")),
    )


def funding_of(venue: str, symbol: str, info: Mapping[str, Any], now_ns: int) -> FundingRate:
    """``interval_h`` from the venue's interval ("8h") when it gives one, else 8."""
    interval = info.get("interval")
    hours = 8.0
    if isinstance(interval, str) and interval.endswith("h") and interval[:-1].isdigit():
        hours = float(interval[:-1]) or 8.0
    next_ms = info.get("nextFundingTimestamp") or info.get("fundingTimestamp")
    return FundingRate(
        ts=_ms(info.get("timestamp"), "funding timestamp", now_ns),
        venue=venue,
        symbol=symbol,
        # ccxt derives some rates by a division (Kraken Futures: USD per contract / mark):
        # 12 significant digits keep float noise from making an unchanged rate look new.
        rate=float(f"{_number(info.get('fundingRate'), 'funding rate'):.12g}"),
        interval_h=hours,
        next_time=_ms(next_ms, "next funding time") if next_ms else 0,
    )
