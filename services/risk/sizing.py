"""Position sizing: how many base units one unit of a signal is, and the venue's rounding.

A signal's ``target_position`` (or ``size``) counts *units*; with ``mode = "signal"`` a unit
is one base unit (the signal's number is the quantity, as before). Otherwise one unit is:

| mode | one unit (base units) |
|---|---|
| ``fixed_qty`` | ``qty`` |
| ``fixed_notional`` | ``notional / price`` |
| ``pct_equity`` | ``equity * pct / 100 / price`` |
| ``turtle`` | ``equity * risk_pct / 100 / (ATR * atr_multiple)`` (ATR from ``Signal.atr``) |
| ``vol_target`` | ``equity * target_vol_pct / 100 / (sigma_annual * price)`` |

``sigma_annual`` is the standard deviation (ddof 1) of the last ``vol_window`` close-to-close
returns times ``sqrt(periods_per_year)``. Quantities are then rounded toward zero to the
instrument's lot size; prices to its tick size (``round_price``).
"""

from __future__ import annotations

import math
import re

import msgspec

from contracts.events import InstrumentKind
from services.risk.limits import SizingRule

_INTERVAL = re.compile(r"(\d+)([smhdwM])")
_PERIOD_MINUTES = {"s": 1 / 60, "m": 1, "h": 60, "d": 1440, "w": 10080, "M": 43200}
_YEAR_MINUTES = 525_600


class InstrumentInfo(msgspec.Struct):
    """What risk knows of an instrument (``md.instrument`` or ``[[instruments]]``)."""

    base: str = ""
    quote: str = ""
    kind: InstrumentKind = "spot"
    tick_size: float = 0.0
    lot_size: float = 0.0
    min_notional: float = 0.0


def split_symbol(symbol: str) -> tuple[str, str, bool]:
    """``BTC/USDT`` -> (BTC, USDT, spot); ``BTC/USDT:USDT`` -> (BTC, USDT, perpetual);
    anything else -> (symbol, "", spot)."""
    base, slash, rest = symbol.partition("/")
    if not slash:
        return symbol, "", False
    quote, colon, _settle = rest.partition(":")
    return base, quote, bool(colon)


def periods_per_year(interval: str) -> float:
    match = _INTERVAL.fullmatch(interval)
    if match is None:
        return 365.0
    return _YEAR_MINUTES / (int(match.group(1)) * _PERIOD_MINUTES[match.group(2)])


def stdev(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean = math.fsum(values) / n
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def unit_qty(
    rule: SizingRule,
    price: float | None,
    equity: float | None,
    atr: float | None,
    returns: list[float] | None,
    interval: str,
) -> tuple[float, str]:
    """One unit in base units, or (0, why it cannot be sized)."""
    mode = rule.mode
    if mode == "signal":
        return 1.0, ""
    if mode == "fixed_qty":
        return rule.qty or 0.0, ""
    if mode != "turtle" and not price:
        return 0.0, "no price seen yet"
    if mode == "fixed_notional":
        return (rule.notional or 0.0) / price, ""  # type: ignore[operator]
    if equity is None:
        return 0.0, "no equity snapshot yet"
    if equity <= 0:
        return 0.0, f"equity {equity:.2f} <= 0"
    if mode == "pct_equity":
        return equity * (rule.pct or 0.0) / 100.0 / price, ""  # type: ignore[operator]
    if mode == "turtle":
        if atr is None or not atr > 0:
            return 0.0, "the signal carries no ATR (atr) for N-unit sizing"
        risk = equity * rule.risk_pct / 100.0
        return risk / (atr * rule.atr_multiple), ""
    # vol_target
    window = (returns or [])[-rule.vol_window :]
    if len(window) < rule.vol_window:
        return 0.0, f"{len(window)} returns seen, vol_window needs {rule.vol_window}"
    per_year = rule.periods_per_year or periods_per_year(interval)
    sigma = stdev(window) * math.sqrt(per_year)
    if not sigma > 0:
        return 0.0, "volatility is 0"
    return equity * (rule.target_vol_pct or 0.0) / 100.0 / (sigma * price), ""  # type: ignore[operator]


def round_qty(qty: float, lot: float) -> float:
    """``qty`` (>= 0) rounded toward zero to a multiple of ``lot`` (0 = no rounding)."""
    if lot <= 0:
        return qty
    steps = math.floor(qty / lot + 1e-9)
    return _clean(steps * lot, lot)


def round_price(price: float, tick: float, up: bool) -> float:
    """``price`` rounded to the tick grid, up or down (0 = no rounding)."""
    if tick <= 0:
        return price
    ratio = price / tick
    steps = math.ceil(ratio - 1e-9) if up else math.floor(ratio + 1e-9)
    return _clean(steps * tick, tick)


def _clean(value: float, step: float) -> float:
    """Drop the binary noise of ``steps * step`` (0.1 * 3 -> 0.3)."""
    decimals = max(0, -math.floor(math.log10(step)) + 6)
    return round(value, decimals)
