"""Risk configuration: the rails (``[risk]``), the guards (``[guards.*]``), sizing
(``[sizing]``) and instrument specs (``[[instruments]]``), as frozen msgspec structs.

Every rail is optional (``None`` or empty = off) and a fresh ``RiskLimits()`` checks nothing
but the kill switch, so a config without a ``[risk]`` table trades exactly as before. Every
struct validates its own values in ``__post_init__`` with a message that names the key;
msgspec adds the path (``- at `$.guards.depeg```), so a bad config stops start-up with one
line naming the key. docs/risk.md is the reference.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import msgspec

from contracts.events import InstrumentKind

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_NS = {
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
    "w": 604_800_000_000_000,
}


def duration_ns(text: str, key: str) -> int:
    """``"6h"`` -> nanoseconds; units ms, s, m, h, d, w; ``"0s"`` is zero."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{key} ({text!r}) must be a duration like 90s, 5m, 6h or 1d")
    return round(float(match.group(1)) * _UNIT_NS[match.group(2)])


def _positive(owner: msgspec.Struct, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be > 0 (got {value})")


def _percent(owner: msgspec.Struct, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if value is not None and not (math.isfinite(value) and 0 < value <= 100):
            raise ValueError(f"{name} must be within (0, 100] (got {value})")


class BreakerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Venue circuit breaker: OPEN when, over ``window``, at least ``min_reports`` execution
    reports came from a venue and more than ``max_error_pct`` of them were rejections;
    HALF_OPEN after ``cooldown`` (one probe order goes through); CLOSED when the probe is
    accepted or filled, OPEN again when it is rejected."""

    window: str = "5m"
    min_reports: int = 5
    max_error_pct: float = 50.0
    cooldown: str = "2m"

    def __post_init__(self) -> None:
        if duration_ns(self.window, "window") <= 0:
            raise ValueError(f"window ({self.window!r}) must be > 0")
        duration_ns(self.cooldown, "cooldown")
        if self.min_reports < 1:
            raise ValueError(f"min_reports must be >= 1 (got {self.min_reports})")
        if not (math.isfinite(self.max_error_pct) and 0 <= self.max_error_pct < 100):
            raise ValueError(f"max_error_pct must be within [0, 100) (got {self.max_error_pct})")


class CorrelationConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Correlation cap: a signal that opens a position in a symbol is rejected when the
    correlation of its bar returns with a held symbol's, over the last ``window`` common
    bars (at least ``min_periods``), times the product of the two directions, exceeds
    ``max``. ``interval`` picks the bars (default: the first interval seen per symbol)."""

    max: float = 0.8
    window: int = 60
    min_periods: int = 20
    interval: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max) and -1 <= self.max <= 1):
            raise ValueError(f"max must be within [-1, 1] (got {self.max})")
        if self.window < 3:
            raise ValueError(f"window must be >= 3 (got {self.window})")
        if not 3 <= self.min_periods <= self.window:
            raise ValueError(f"min_periods must be within [3, window] (got {self.min_periods})")


class RiskLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The rails (``[risk]``). Notional amounts are in the instruments' quote currency."""

    trading_enabled: bool = True
    allowed_symbols: tuple[str, ...] = ()
    denied_symbols: tuple[str, ...] = ()
    min_order_notional: float | None = None
    max_order_notional: float | None = None
    max_position: float | None = None
    max_symbol_exposure: float | None = None
    max_venue_exposure: float | None = None
    max_total_exposure: float | None = None
    max_open_positions: int | None = None
    max_orders_per_minute: int | None = None
    max_venue_orders_per_minute: int | None = None
    equity_floor: float | None = None
    max_drawdown_pct: float | None = None
    max_daily_loss_pct: float | None = None
    soft_equity_floor: float | None = None
    soft_drawdown_pct: float | None = None
    soft_daily_loss_pct: float | None = None
    soft_action: Literal["safe_mode", "degrade"] = "safe_mode"
    flatten_on_halt: bool = False
    brackets: bool = False
    spot_shorts: bool = False
    """Spot instruments (known from ``md.instrument`` or ``[[instruments]]``) may go short:
    only for a margin account; perpetuals always may."""
    """Entry orders carry the signal's ``stop``/``target`` as a bracket for the order manager."""
    breaker: BreakerConfig | None = None
    correlation: CorrelationConfig | None = None

    def __post_init__(self) -> None:
        _positive(
            self,
            "min_order_notional",
            "max_order_notional",
            "max_position",
            "max_symbol_exposure",
            "max_venue_exposure",
            "max_total_exposure",
            "equity_floor",
            "soft_equity_floor",
        )
        _percent(
            self,
            "max_drawdown_pct",
            "max_daily_loss_pct",
            "soft_drawdown_pct",
            "soft_daily_loss_pct",
        )
        for name in ("max_open_positions", "max_orders_per_minute", "max_venue_orders_per_minute"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (got {value})")
        if (
            self.min_order_notional is not None
            and self.max_order_notional is not None
            and self.min_order_notional > self.max_order_notional
        ):
            raise ValueError(
                f"min_order_notional ({self.min_order_notional:g}) is above "
                f"max_order_notional ({self.max_order_notional:g})"
            )
        overlap = set(self.allowed_symbols) & set(self.denied_symbols)
        if overlap:
            raise ValueError(f"denied_symbols and allowed_symbols both hold {sorted(overlap)}")
        for soft, hard, above in (
            ("soft_equity_floor", "equity_floor", True),
            ("soft_drawdown_pct", "max_drawdown_pct", False),
            ("soft_daily_loss_pct", "max_daily_loss_pct", False),
        ):
            s, h = getattr(self, soft), getattr(self, hard)
            if s is not None and h is not None and (s <= h if above else s >= h):
                relation = "above" if above else "below"
                raise ValueError(f"{soft} ({s:g}) must be {relation} {hard} ({h:g})")


class DepegGuard(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[guards.depeg]`` (or ``[[guards.depeg]]`` for several stablecoins)."""

    asset: str
    reference: str = "USD"
    threshold_pct: float = 1.0
    resume_after: str = "1h"
    action: Literal["halt_entries", "flatten"] = "halt_entries"

    def __post_init__(self) -> None:
        if not self.asset or not self.reference or self.asset == self.reference:
            raise ValueError("asset and reference must be two different currencies")
        _positive(self, "threshold_pct")
        duration_ns(self.resume_after, "resume_after")

    @property
    def resume_ns(self) -> int:
        return duration_ns(self.resume_after, "resume_after")


class FundingGuard(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[guards.funding]``: perpetuals whose funding rate (per funding interval, in percent)
    is beyond ``threshold_pct`` against a side: ``block`` rejects entries on the paying side,
    ``trim`` also cuts positions on the paying side by ``trim_pct`` percent once per
    crossing. ``symbols`` limits it (default: every perpetual with a funding rate)."""

    threshold_pct: float = 0.1
    action: Literal["block", "trim"] = "block"
    trim_pct: float = 50.0
    symbols: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _positive(self, "threshold_pct")
        _percent(self, "trim_pct")


class GuardsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    depeg: DepegGuard | list[DepegGuard] | None = None
    funding: FundingGuard | None = None

    @property
    def depegs(self) -> tuple[DepegGuard, ...]:
        if self.depeg is None:
            return ()
        return tuple(self.depeg) if isinstance(self.depeg, list) else (self.depeg,)


SizingMode = Literal["signal", "fixed_qty", "fixed_notional", "pct_equity", "turtle", "vol_target"]


class SizingRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How one unit of a signal becomes a quantity (docs/risk.md, Sizing)."""

    mode: SizingMode = "signal"
    qty: float | None = None
    notional: float | None = None
    pct: float | None = None
    risk_pct: float = 1.0
    atr_multiple: float = 2.0
    target_vol_pct: float | None = None
    vol_window: int = 20
    periods_per_year: float | None = None
    cap: bool = True

    def __post_init__(self) -> None:
        _positive(self, "qty", "notional", "atr_multiple", "target_vol_pct", "periods_per_year")
        _percent(self, "pct", "risk_pct")
        needs = {
            "fixed_qty": "qty",
            "fixed_notional": "notional",
            "pct_equity": "pct",
            "vol_target": "target_vol_pct",
        }.get(self.mode)
        if needs is not None and getattr(self, needs) is None:
            raise ValueError(f"mode {self.mode!r} needs {needs}")
        if self.vol_window < 2:
            raise ValueError(f"vol_window must be >= 2 (got {self.vol_window})")


class SizingConfig(SizingRule, frozen=True, forbid_unknown_fields=True):
    """``[sizing]``, with ``[sizing.strategies.<instance>]`` overriding it per strategy."""

    strategies: dict[str, SizingRule] = msgspec.field(default_factory=dict)

    def rule(self, strategy: str) -> SizingRule:
        return self.strategies.get(strategy, self)


class InstrumentSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[[instruments]]``: what ``md.instrument.*`` would say, for runs without it (a
    backtest). Base and quote default to the symbol's ``BASE/QUOTE[:SETTLE]`` parts."""

    venue: str
    symbol: str
    base: str = ""
    quote: str = ""
    kind: InstrumentKind = "spot"
    tick_size: float = 0.0
    lot_size: float = 0.0
    min_notional: float = 0.0
    contract_size: float = 1.0
    """units of base per contract (perpetuals; the portfolio's PnL and margin use it)."""
    max_leverage: float = 0.0
    """the venue's leverage cap (0 = none given; caps ``[portfolio]`` leverage)."""

    def __post_init__(self) -> None:
        for name in ("tick_size", "lot_size", "min_notional", "max_leverage"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0 (got {value})")
        if not (math.isfinite(self.contract_size) and self.contract_size > 0):
            raise ValueError(f"contract_size must be > 0 (got {self.contract_size})")
