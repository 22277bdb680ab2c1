"""Risk configuration: the rails (``[risk]``), the guards (``[guards.*]``), sizing
(``[sizing]``) and instrument specs (``[[instruments]]``), as frozen msgspec structs.

Every rail is optional (``None`` or empty = off): a fresh ``RiskLimits()`` checks nothing but
the kill switch. The range of a single value is a msgspec constraint, checked when the TOML
is decoded (``Expected `float` > 0.0 - at `$.risk.max_position```); what involves several
keys, durations and finiteness is checked in ``__post_init__`` with a message naming the
keys, and msgspec adds the path. Either way a bad config stops start-up with one line.
docs/risk.md is the reference.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from contracts.events import InstrumentKind
from contracts.intervals import Interval, duration_ns

Positive = Annotated[float, Meta(gt=0)]
NonNegative = Annotated[float, Meta(ge=0)]
Percent = Annotated[float, Meta(gt=0, le=100)]
Count = Annotated[int, Meta(ge=1)]
Duration = Annotated[
    str,
    Meta(
        pattern=r"^[0-9]+(\.[0-9]+)?(ms|s|m|h|d|w)$",
        description="a duration: 250ms, 90s, 5m, 6h, 1d or 2w",
    ),
]


def _finite(owner: msgspec.Struct, *names: str) -> None:
    """msgspec bounds reject nan but let inf through a lower bound alone."""
    for name in names:
        value = getattr(owner, name)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number (got {value})")


class BreakerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Venue circuit breaker: OPEN when, over ``window``, at least ``min_reports`` execution
    reports came from a venue and more than ``max_error_pct`` of them were rejections;
    HALF_OPEN after ``cooldown`` (one probe order goes through); CLOSED when the probe is
    accepted or filled, OPEN again when it is rejected."""

    window: str = "5m"
    min_reports: Count = 5
    max_error_pct: Annotated[float, Meta(ge=0, lt=100)] = 50.0
    cooldown: str = "2m"

    def __post_init__(self) -> None:
        if self.window_ns <= 0:
            raise ValueError(f"window ({self.window!r}) must be > 0")
        duration_ns(self.cooldown, "cooldown")

    @property
    def window_ns(self) -> int:
        return duration_ns(self.window, "window")

    @property
    def cooldown_ns(self) -> int:
        return duration_ns(self.cooldown, "cooldown")


class CorrelationConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Correlation cap: a signal that opens a position in a symbol is rejected when the
    correlation of its bar returns with a held symbol's, over the last ``window`` common
    bars (at least ``min_periods``), times the product of the two directions, exceeds
    ``max``. ``interval`` picks the bars (default: the first interval seen per symbol)."""

    max: Annotated[float, Meta(ge=-1, le=1)] = 0.8
    window: Annotated[int, Meta(ge=3)] = 60
    min_periods: Annotated[int, Meta(ge=3)] = 20
    interval: str = ""

    def __post_init__(self) -> None:
        if self.min_periods > self.window:
            raise ValueError(f"min_periods must be within [3, window] (got {self.min_periods})")
        if self.interval:
            Interval.parse(self.interval, "interval")


class RiskLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The rails (``[risk]``). Notional amounts are in the instruments' quote currency."""

    trading_enabled: bool = True
    allowed_symbols: tuple[str, ...] = ()
    denied_symbols: tuple[str, ...] = ()
    min_order_notional: Positive | None = None
    max_order_notional: Positive | None = None
    max_position: Positive | None = None
    max_symbol_exposure: Positive | None = None
    max_venue_exposure: Positive | None = None
    max_total_exposure: Positive | None = None
    max_open_positions: Count | None = None
    max_orders_per_minute: Count | None = None
    max_venue_orders_per_minute: Count | None = None
    equity_floor: Positive | None = None
    max_drawdown_pct: Percent | None = None
    max_daily_loss_pct: Percent | None = None
    soft_equity_floor: Positive | None = None
    soft_drawdown_pct: Percent | None = None
    soft_daily_loss_pct: Percent | None = None
    soft_action: Literal["safe_mode", "degrade"] = "safe_mode"
    flatten_on_halt: bool = False
    brackets: bool = False
    """Entry orders carry the signal's ``stop``/``target`` as a bracket for the order manager."""
    spot_shorts: bool = False
    """Spot instruments (known from ``md.instrument`` or ``[[instruments]]``) may go short:
    only for a margin account; perpetuals always may."""
    breaker: BreakerConfig | None = None
    correlation: CorrelationConfig | None = None
    max_signal_lag: Duration = "0s"
    """How much older than the market's latest bar a signal's bar may be for an entry
    (the ``stale_signal`` rail); ``0s``: none newer may have been seen."""

    def __post_init__(self) -> None:
        duration_ns(self.max_signal_lag, "max_signal_lag")
        _finite(
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

    @property
    def max_signal_lag_ns(self) -> int:
        return duration_ns(self.max_signal_lag, "max_signal_lag")

    @property
    def equity_rails(self) -> bool:
        """Whether any hard or soft equity rail is on."""
        return any(
            v is not None
            for v in (
                self.equity_floor,
                self.max_drawdown_pct,
                self.max_daily_loss_pct,
                self.soft_equity_floor,
                self.soft_drawdown_pct,
                self.soft_daily_loss_pct,
            )
        )


class DepegGuard(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[guards.depeg]`` (or ``[[guards.depeg]]`` for several stablecoins)."""

    asset: str
    reference: str = "USD"
    threshold_pct: Positive = 1.0
    resume_after: str = "1h"
    action: Literal["halt_entries", "flatten"] = "halt_entries"

    def __post_init__(self) -> None:
        if not self.asset or not self.reference or self.asset == self.reference:
            raise ValueError("asset and reference must be two different currencies")
        _finite(self, "threshold_pct")
        duration_ns(self.resume_after, "resume_after")

    @property
    def resume_ns(self) -> int:
        return duration_ns(self.resume_after, "resume_after")


class FundingGuard(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[guards.funding]``: perpetuals whose funding rate (per funding interval, in percent)
    is beyond ``threshold_pct`` against a side: ``block`` rejects entries on the paying side,
    ``trim`` also cuts positions on the paying side by ``trim_pct`` percent once per
    crossing. ``symbols`` limits it (default: every perpetual with a funding rate)."""

    threshold_pct: Positive = 0.1
    action: Literal["block", "trim"] = "block"
    trim_pct: Percent = 50.0
    symbols: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _finite(self, "threshold_pct")


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
    qty: Positive | None = None
    notional: Positive | None = None
    pct: Percent | None = None
    risk_pct: Percent = 1.0
    atr_multiple: Positive = 2.0
    target_vol_pct: Positive | None = None
    vol_window: Annotated[int, Meta(ge=2)] = 20
    periods_per_year: Positive | None = None
    """Overrides the bars' interval in ``vol_target``'s annualisation."""
    cap: bool = True

    def __post_init__(self) -> None:
        _finite(self, "qty", "notional", "atr_multiple", "target_vol_pct", "periods_per_year")
        needs = {
            "fixed_qty": "qty",
            "fixed_notional": "notional",
            "pct_equity": "pct",
            "vol_target": "target_vol_pct",
        }.get(self.mode)
        if needs is not None and getattr(self, needs) is None:
            raise ValueError(f"mode {self.mode!r} needs {needs}")

    @property
    def sized(self) -> bool:
        """Whether a unit is anything but one base unit."""
        return self.mode != "signal"


class SizingConfig(SizingRule, frozen=True, forbid_unknown_fields=True):
    """``[sizing]``, with ``[sizing.strategies.<instance>]`` overriding it per strategy."""

    strategies: dict[str, SizingRule] = msgspec.field(default_factory=dict)

    def rule(self, strategy: str) -> SizingRule:
        return self.strategies.get(strategy, self)

    @property
    def rules(self) -> tuple[SizingRule, ...]:
        return (self, *self.strategies.values())


class InstrumentSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[[instruments]]``: what ``md.instrument.*`` would say, for runs without it (a
    backtest). Base and quote default to the symbol's ``BASE/QUOTE[:SETTLE]`` parts."""

    venue: str
    symbol: str
    base: str = ""
    quote: str = ""
    kind: InstrumentKind = "spot"
    tick_size: NonNegative = 0.0
    lot_size: NonNegative = 0.0
    min_notional: NonNegative = 0.0
    contract_size: Positive = 1.0
    """units of base per contract (perpetuals; the portfolio's PnL and margin use it)."""
    max_leverage: NonNegative = 0.0
    """the venue's leverage cap (0 = none given; caps ``[portfolio]`` leverage)."""

    def __post_init__(self) -> None:
        _finite(self, "tick_size", "lot_size", "min_notional", "contract_size", "max_leverage")
