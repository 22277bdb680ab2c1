"""Pre-trade risk: a pure fold over signals, prices, fills, equity, instruments, funding and
governance (``decide(event, now)``; ``now`` is the event time, never the wall clock).

A signal's target position (in units, sized by ``[sizing]``) becomes an order for the
difference between the target and what the strategy holds plus what it already has
working, so a repeated signal never doubles an order. The rails are data: an ordered tuple
of checks compiled from the configuration, evaluated generically; the first breach rejects
with a ``RiskDecision`` naming the rule and the numbers. Rails that cap exposure only apply
to orders that grow the symbol's absolute exposure, so a reduction is never blocked by them.

Hard breaches (equity floor, max drawdown, daily loss) halt trading (and flatten when
configured); soft breaches cancel risk's working entry orders, ask the order manager to
tighten stops (a ``RiskAlert``) and block entries (SAFE_MODE) or only warn (DEGRADED).
Every change of the combined status is a ``SystemStatus`` on ``sys.status.risk`` and every
guard action a ``RiskAlert`` on ``ord.alert.<rule>``. docs/risk.md is the reference.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import msgspec

from contracts.events import (
    Bar,
    EquitySnapshot,
    Event,
    ExecutionReport,
    FundingRate,
    GovernanceCommand,
    Instrument,
    OrderCommand,
    RiskAlert,
    RiskDecision,
    Signal,
    SystemState,
    SystemStatus,
)
from contracts.subjects import symbol_token
from services.risk.breaker import BreakerState, Transition, VenueBreaker
from services.risk.guards import Depeg, DepegState, Funding, FundingState
from services.risk.limits import (
    GuardsConfig,
    InstrumentSpec,
    RiskLimits,
    SizingConfig,
    SizingRule,
)
from services.risk.sizing import InstrumentInfo, round_price, round_qty, split_symbol, unit_qty

EPS = 1e-12
TOL = 1 + 1e-9  # caps compare with this relative slack: a capped order is exactly at the cap
MINUTE_NS = 60_000_000_000
DAY_NS = 86_400_000_000_000
SOURCE = "risk"
SEVERITY: dict[str, int] = {"RUNNING": 0, "DEGRADED": 1, "SAFE_MODE": 2, "HALTED": 3}

Breach = tuple[str, str] | None


class _Working(msgspec.Struct):
    key: str
    symbol_key: str
    remaining: float
    entry: bool = False


class Condition(msgspec.Struct, frozen=True):
    """One reason for the status: ``status`` it implies, ``rule``, ``reason``, ``since``."""

    status: SystemState
    rule: str
    reason: str
    since: int = 0


class EquityTrack(msgspec.Struct):
    equity: float
    peak: float
    day: int
    day_open: float


class ReturnSeries(msgspec.Struct):
    interval: str
    close: float
    ts: list[int] = msgspec.field(default_factory=list)
    rets: list[float] = msgspec.field(default_factory=list)


class RiskState(msgspec.Struct):
    killed: bool = False
    kill_reason: str = ""
    positions: dict[str, float] = msgspec.field(default_factory=dict)
    working: dict[str, _Working] = msgspec.field(default_factory=dict)
    prices: dict[str, float] = msgspec.field(default_factory=dict)
    orders: dict[str, int] = msgspec.field(default_factory=dict)
    net: dict[str, float] = msgspec.field(default_factory=dict)
    instruments: dict[str, InstrumentInfo] = msgspec.field(default_factory=dict)
    equity: EquityTrack | None = None
    conditions: dict[str, Condition] = msgspec.field(default_factory=dict)
    published: Condition = Condition("RUNNING", "", "")
    breakers: dict[str, BreakerState] = msgspec.field(default_factory=dict)
    strategy_orders: dict[str, list[int]] = msgspec.field(default_factory=dict)
    venue_orders: dict[str, list[int]] = msgspec.field(default_factory=dict)
    returns: dict[str, ReturnSeries] = msgspec.field(default_factory=dict)
    pair_prices: dict[str, float] = msgspec.field(default_factory=dict)
    depeg: dict[str, DepegState] = msgspec.field(default_factory=dict)
    funding: dict[str, FundingState] = msgspec.field(default_factory=dict)
    sized: dict[str, list[float]] = msgspec.field(default_factory=dict)
    cancels: dict[str, bool] = msgspec.field(default_factory=dict)


def _symbol_key(venue: str, symbol: str) -> str:
    return f"{venue}|{symbol}"


def _split_key(key: str) -> tuple[str, str, str]:
    """``strategy#venue|symbol`` -> (strategy, venue, symbol)."""
    strategy, _, symbol_key = key.partition("#")
    venue, _, symbol = symbol_key.partition("|")
    return strategy, venue, symbol


class _Ctx:
    """What the checks of one order look at."""

    __slots__ = (
        "after",
        "before",
        "delta",
        "increases",
        "now",
        "opening",
        "price",
        "qty",
        "quote",
        "signal",
        "sk",
    )

    def __init__(
        self,
        signal: Signal,
        sk: str,
        delta: float,
        before: float,
        price: float | None,
        quote: str,
        now: int,
    ) -> None:
        self.signal = signal
        self.now = now
        self.sk = sk
        self.delta = delta
        self.qty = abs(delta)
        self.before = before
        after = self.after = before + delta
        self.increases = abs(after) > abs(before) + EPS
        self.opening = abs(before) <= EPS and abs(after) > EPS
        self.price = price
        self.quote = quote


Check = Callable[[_Ctx], Breach]


class RiskEngine:
    def __init__(
        self,
        limits: RiskLimits | None = None,
        guards: GuardsConfig | None = None,
        sizing: SizingConfig | None = None,
        instruments: tuple[InstrumentSpec, ...] = (),
    ) -> None:
        self.guards = guards or GuardsConfig()
        self.sizing = sizing or SizingConfig()
        self.instrument_specs = instruments
        self.state = RiskState()
        self._dirty = False
        self._limits = limits or RiskLimits()
        self._handlers: dict[type, Callable[[Any, int], list[Event]]] = {
            Signal: self._on_signal,
            Bar: self._on_bar,
            ExecutionReport: self._on_report,
            GovernanceCommand: self._on_governance,
            EquitySnapshot: self._on_equity,
            Instrument: self._on_instrument,
            FundingRate: self._on_funding,
        }
        self._bind()

    # --- configuration --------------------------------------------------------------------

    @property
    def limits(self) -> RiskLimits:
        return self._limits

    @limits.setter
    def limits(self, limits: RiskLimits) -> None:
        self._limits = limits
        self._bind()

    @property
    def needs_equity(self) -> bool:
        """Whether this configuration reads the portfolio's equity (``pf.equity``)."""
        lim = self._limits
        rules = (self.sizing, *self.sizing.strategies.values())
        return any(
            v is not None
            for v in (
                lim.equity_floor,
                lim.max_drawdown_pct,
                lim.max_daily_loss_pct,
                lim.soft_equity_floor,
                lim.soft_drawdown_pct,
                lim.soft_daily_loss_pct,
            )
        ) or any(r.mode in ("pct_equity", "turtle", "vol_target") for r in rules)

    def _bind(self) -> None:
        """Compile the rails into the ordered tuple of checks and bind the helpers to the
        state (after construction, a change of limits and a restore)."""
        lim, state = self._limits, self.state
        for spec in self.instrument_specs:
            key = _symbol_key(spec.venue, spec.symbol)
            if key not in state.instruments:
                state.instruments[key] = self._info(spec)
        if state.killed and "kill" not in state.conditions:
            reason = f"trading halted: {state.kill_reason or 'kill switch on'}"
            state.conditions["kill"] = Condition("HALTED", "kill_switch", reason)
        if not state.net and (state.positions or state.working):
            for key, qty in state.positions.items():
                sk = key.partition("#")[2]
                state.net[sk] = state.net.get(sk, 0.0) + qty
            for w in state.working.values():
                state.net[w.symbol_key] = state.net.get(w.symbol_key, 0.0) + w.remaining
        self._by_key: dict[str, list[str]] = {}
        for order_id, w in state.working.items():
            self._by_key.setdefault(w.key, []).append(order_id)
        self._quotes: dict[str, tuple[str, str, bool]] = {}
        self._venues: dict[str, str] = {}
        self._keys: dict[str, dict[str, str]] = {}
        self._breaker = VenueBreaker(lim.breaker, state.breakers) if lim.breaker else None
        self._depegs = [
            Depeg(g, state.depeg.setdefault(g.asset, DepegState())) for g in self.guards.depegs
        ]
        self._funding = Funding(self.guards.funding, state.funding) if self.guards.funding else None
        rules = (self.sizing, *self.sizing.strategies.values())
        self._sizing_on = any(r.mode != "signal" for r in rules)
        vol = max((r.vol_window for r in rules if r.mode == "vol_target"), default=0)
        corr = lim.correlation.window if lim.correlation else 0
        self._returns_len = max(vol, corr)
        self._corr_cache: dict[tuple[str, str], tuple[int, int, float | None]] = {}
        self._sums_cache: dict[str, tuple[int, tuple]] = {}
        self._memo_gross: tuple[str, tuple[float, float]] | None = None
        self._memo_open: tuple[str, list[str]] | None = None
        self._equity_rails = any(
            v is not None
            for v in (
                lim.equity_floor,
                lim.max_drawdown_pct,
                lim.max_daily_loss_pct,
                lim.soft_equity_floor,
                lim.soft_drawdown_pct,
                lim.soft_daily_loss_pct,
            )
        )
        self._refresh_gates()
        self._plain_bars = not (self._breaker or self._returns_len or self._depegs)
        checks: list[Check] = [self._check_kill, self._check_halt]
        if lim.denied_symbols:
            self._denied = frozenset(lim.denied_symbols)
            checks.append(self._check_denylist)
        if lim.allowed_symbols:
            self._allowed = frozenset(lim.allowed_symbols)
            checks.append(self._check_allowlist)
        if self._breaker is not None:
            checks.append(self._check_breaker)
        if self._equity_rails:
            checks.append(self._check_soft)
        if self._depegs:
            checks.append(self._check_depeg)
        if self._funding is not None:
            checks.append(self._check_funding)
        if lim.max_orders_per_minute is not None:
            checks.append(self._check_strategy_rate)
        if lim.max_venue_orders_per_minute is not None:
            checks.append(self._check_venue_rate)
        if lim.min_order_notional is not None:
            checks.append(self._check_min_notional)
        if lim.max_order_notional is not None:
            checks.append(self._check_max_notional)
        if lim.max_position is not None:
            checks.append(self._check_max_position)
        if lim.max_symbol_exposure is not None:
            checks.append(self._check_symbol_exposure)
        if lim.max_venue_exposure is not None or lim.max_total_exposure is not None:
            checks.append(self._check_gross_exposure)
        if lim.max_open_positions is not None:
            checks.append(self._check_open_positions)
        if lim.correlation is not None:
            checks.append(self._check_correlation)
        self.checks: tuple[Check, ...] = tuple(checks)
        self.rules: tuple[str, ...] = tuple(c.__name__.removeprefix("_check_") for c in checks)

    @staticmethod
    def _info(spec: InstrumentSpec | Instrument) -> InstrumentInfo:
        base, quote, perpetual = split_symbol(spec.symbol)
        kind = spec.kind if spec.kind != "spot" or not perpetual else "perpetual"
        return InstrumentInfo(
            base=spec.base or base,
            quote=spec.quote or quote,
            kind=kind,
            tick_size=spec.tick_size,
            lot_size=spec.lot_size,
            min_notional=spec.min_notional,
        )

    def _quote(self, sk: str) -> tuple[str, str, bool]:
        """(base, quote, perpetual) of a symbol key: the instrument's, else the symbol's."""
        cached = self._quotes.get(sk)
        if cached is None:
            info = self.state.instruments.get(sk)
            symbol = sk.partition("|")[2]
            if info is not None and info.quote:
                cached = (info.base, info.quote, info.kind == "perpetual")
            else:
                cached = split_symbol(symbol)
            self._quotes[sk] = cached
        return cached

    def _key(self, venue: str, symbol: str) -> str:
        """The symbol key ``venue|symbol``, kept by venue and symbol: a bar builds no string."""
        sk = self._keys.setdefault(venue, {})[symbol] = f"{venue}|{symbol}"
        return sk

    def _venue(self, sk: str) -> str:
        venue = self._venues.get(sk)
        if venue is None:
            venue = self._venues[sk] = sk.partition("|")[0]
        return venue

    # --- the fold -------------------------------------------------------------------------

    def decide(self, event: Event, now: int) -> list[Event]:
        if self._plain_bars and type(event) is Bar:  # nearly every input: only the price
            bar: Bar = event  # type: ignore[assignment]
            try:
                sk = self._keys[bar.venue][bar.symbol]
            except KeyError:
                sk = self._key(bar.venue, bar.symbol)
            self.state.prices[sk] = bar.close
            return []
        breaker = self._breaker
        out: list[Event] = []
        if breaker is not None and breaker.next_deadline is not None:
            for t in breaker.tick(now):
                out.extend(self._on_transition(t, now))
        handler = self._handlers.get(type(event))
        if handler is not None:
            produced = handler(event, now)
            if produced:
                out.extend(produced)
        if self._dirty:
            status = self._publish(now)
            if status is not None:
                out.insert(0, status)
        return out

    # --- status ---------------------------------------------------------------------------

    def _set(self, name: str, condition: Condition | None) -> None:
        conditions = self.state.conditions
        if condition is None:
            if conditions.pop(name, None) is None:
                return
        else:
            conditions[name] = condition
        self._dirty = True
        self._refresh_gates()

    def _refresh_gates(self) -> None:
        """The conditions the checks consult, looked up once per change."""
        conditions = self.state.conditions
        self._halt = next((c for name, c in conditions.items() if name.startswith("halt:")), None)
        self._soft = next(
            (
                c
                for name, c in conditions.items()
                if name.startswith("soft:") and c.status == "SAFE_MODE"
            ),
            None,
        )
        self._depegged = {
            name[6:]: c for name, c in conditions.items() if name.startswith("depeg:")
        }

    def status(self) -> Condition:
        """The combined status: the most severe condition (ties: the earliest), with the
        others named in the reason."""
        conditions = self.state.conditions
        if not conditions:
            return Condition("RUNNING", "", "all clear")
        ranked = sorted(
            conditions.items(), key=lambda kv: (-SEVERITY[kv[1].status], kv[1].since, kv[0])
        )
        worst = ranked[0][1]
        reason = worst.reason
        if len(ranked) > 1:
            others = ", ".join(f"{c.rule} ({c.status})" for _, c in ranked[1:])
            reason = f"{reason}; also {others}"
        return Condition(worst.status, worst.rule, reason, worst.since)

    def _publish(self, now: int) -> SystemStatus | None:
        self._dirty = False
        current = self.status()
        last = self.state.published
        if (current.status, current.rule, current.reason) == (
            last.status,
            last.rule,
            last.reason,
        ) or (current.status == last.status == "RUNNING"):
            return None
        self.state.published = current
        reason = current.reason
        if current.status == "RUNNING":
            reason = f"all clear (was {last.status}: {last.rule})"
        return SystemStatus(
            ts=now, status=current.status, reason=reason, source=SOURCE, rule=current.rule
        )

    # --- governance -----------------------------------------------------------------------

    def _on_governance(self, event: GovernanceCommand, now: int) -> list[Event]:
        """A kill halts at once; the command itself is the status fact (``keel status``
        reads it), so a kill publishes nothing. A resume also re-arms the hard breaches:
        the drawdown peak and the day's opening equity restart at the current equity."""
        state = self.state
        state.killed = event.action == "kill"
        state.kill_reason = event.reason
        if state.killed:
            reason = f"trading halted: {event.reason or 'kill switch on'}"
            state.conditions["kill"] = Condition("HALTED", "kill_switch", reason, now)
            self._refresh_gates()
            return []
        self._set("kill", None)
        for name in [n for n in state.conditions if n.startswith(("halt:", "soft:"))]:
            self._set(name, None)
        track = state.equity
        if track is not None:
            track.peak = track.day_open = track.equity
        return []

    # --- market ---------------------------------------------------------------------------

    def _on_bar(self, bar: Bar, now: int) -> list[Event]:
        try:
            sk = self._keys[bar.venue][bar.symbol]
        except KeyError:
            sk = self._key(bar.venue, bar.symbol)
        self.state.prices[sk] = bar.close
        if self._returns_len:
            self._add_return(sk, bar)
        if self._depegs:
            return self._on_depeg_price(sk, bar.close, now)
        return []

    def _add_return(self, sk: str, bar: Bar) -> None:
        series = self.state.returns.get(sk)
        corr = self._limits.correlation
        if series is None:
            if corr is None or not corr.interval or corr.interval == bar.interval:
                self.state.returns[sk] = ReturnSeries(bar.interval, bar.close)
            return
        if series.interval != bar.interval:
            return
        series.ts.append(bar.ts)
        series.rets.append(bar.close / series.close - 1.0)
        series.close = bar.close
        if len(series.ts) > self._returns_len:
            del series.ts[0]
            del series.rets[0]

    def _on_instrument(self, event: Instrument, now: int) -> list[Event]:
        sk = _symbol_key(event.venue, event.symbol)
        self.state.instruments[sk] = self._info(event)
        self._quotes.pop(sk, None)
        return []

    # --- executions -----------------------------------------------------------------------

    def _on_report(self, report: ExecutionReport, now: int) -> list[Event]:
        state = self.state
        order_id = report.client_order_id
        key = f"{report.strategy}#{report.venue}|{report.symbol}"
        signed = report.fill_qty if report.side == "buy" else -report.fill_qty
        working = state.working.get(order_id)
        if report.fill_qty:
            state.positions[key] = state.positions.get(key, 0.0) + signed
            if working is None:
                sk = key.partition("#")[2]
                state.net[sk] = state.net.get(sk, 0.0) + signed
        out: list[Event] = []
        cancel = state.cancels.get(order_id)
        if self._breaker is not None and not (cancel and report.status == "rejected"):
            t = self._breaker.report(report.venue, order_id, report.status, now)
            if t is not None:
                out = self._on_transition(t, now)
        if working is None:
            state.cancels.pop(order_id, None)
            return out
        working.remaining -= signed
        status = report.status
        if status == "rejected" and cancel:
            del state.cancels[order_id]  # our cancel came too late: the order still stands
        elif status in ("filled", "canceled", "rejected", "expired"):
            del state.working[order_id]
            state.cancels.pop(order_id, None)
            ids = self._by_key.get(working.key)
            if ids is not None:
                ids.remove(order_id)
                if not ids:
                    del self._by_key[working.key]
            if working.remaining:
                sk = working.symbol_key
                state.net[sk] = state.net.get(sk, 0.0) - working.remaining
        return out

    def _on_transition(self, t: Transition, now: int) -> list[Event]:
        name = f"breaker:{t.venue}"
        if t.after == "CLOSED":
            self._set(name, None)
        else:
            reason = f"venue {t.venue} breaker {t.after}: {t.reason}"
            self._set(name, Condition("DEGRADED", "venue_breaker", reason, now))
        action = t.after.lower()
        detail = f"venue {t.venue} {t.before} -> {t.after}: {t.reason}"
        return [
            RiskAlert(ts=now, rule="venue_breaker", action=action, detail=detail, venue=t.venue)
        ]

    # --- equity rails ---------------------------------------------------------------------

    def _on_equity(self, event: EquitySnapshot, now: int) -> list[Event]:
        state = self.state
        equity = event.equity
        day = event.ts // DAY_NS
        track = state.equity
        if track is None:
            track = state.equity = EquityTrack(equity, equity, day, equity)
        else:
            if day != track.day:
                track.day_open, track.day = track.equity, day
                self._set("halt:max_daily_loss", None)
                self._set("soft:soft_daily_loss", None)
            if equity > track.peak:
                track.peak = equity
            track.equity = equity
        if not self._equity_rails:
            return []
        lim = self._limits
        drawdown = 100.0 * (track.peak - equity) / track.peak if track.peak > 0 else 0.0
        daily = 100.0 * (track.day_open - equity) / track.day_open if track.day_open > 0 else 0.0
        out: list[Event] = []
        if self._halt is None:
            breach: tuple[str, str] | None = None
            if lim.equity_floor is not None and equity < lim.equity_floor:
                breach = "equity_floor", f"equity {equity:.2f} < floor {lim.equity_floor:.2f}"
            elif lim.max_drawdown_pct is not None and drawdown > lim.max_drawdown_pct:
                breach = (
                    "max_drawdown",
                    f"drawdown {drawdown:.2f}% from peak {track.peak:.2f} "
                    f"> max {lim.max_drawdown_pct:g}%",
                )
            elif lim.max_daily_loss_pct is not None and daily > lim.max_daily_loss_pct:
                breach = (
                    "max_daily_loss",
                    f"daily loss {daily:.2f}% from {track.day_open:.2f} "
                    f"> max {lim.max_daily_loss_pct:g}%",
                )
            if breach is not None:
                out.extend(self._hard_breach(*breach, now))
        for rule, level, value, beyond in (
            (
                "soft_equity_floor",
                lim.soft_equity_floor,
                equity,
                equity < (lim.soft_equity_floor or 0),
            ),
            (
                "soft_drawdown",
                lim.soft_drawdown_pct,
                drawdown,
                drawdown > (lim.soft_drawdown_pct or 0),
            ),
            (
                "soft_daily_loss",
                lim.soft_daily_loss_pct,
                daily,
                daily > (lim.soft_daily_loss_pct or 0),
            ),
        ):
            if level is None:
                continue
            name = f"soft:{rule}"
            active = name in state.conditions
            if beyond and not active:
                unit = "" if rule == "soft_equity_floor" else "%"
                reason = f"{rule.removeprefix('soft_')} {value:.2f}{unit} beyond soft limit {level:g}{unit}"
                out.extend(self._soft_breach(rule, reason, now))
            elif not beyond and active:
                self._set(name, None)
        return out

    def _hard_breach(self, rule: str, reason: str, now: int) -> list[Event]:
        self._set(f"halt:{rule}", Condition("HALTED", rule, reason, now))
        flatten = self._limits.flatten_on_halt
        action = "flatten" if flatten else "halt"
        out: list[Event] = [RiskAlert(ts=now, rule=rule, action=action, detail=reason)]
        if flatten:
            out.extend(self._flatten(now, lambda sk: True))
        else:
            out.extend(self._cancel_entries(now))
        return out

    def _soft_breach(self, rule: str, reason: str, now: int) -> list[Event]:
        safe = self._limits.soft_action == "safe_mode"
        status: SystemState = "SAFE_MODE" if safe else "DEGRADED"
        self._set(f"soft:{rule}", Condition(status, rule, reason, now))
        out: list[Event] = []
        if safe:
            cancels = self._cancel_entries(now)
            out.append(
                RiskAlert(
                    ts=now,
                    rule=rule,
                    action="cancel_entries",
                    detail=f"{reason}: {len(cancels)} working entry orders canceled",
                )
            )
            out.extend(cancels)
        out.append(RiskAlert(ts=now, rule=rule, action="tighten_stops", detail=reason))
        return out

    # --- guards ---------------------------------------------------------------------------

    def _on_depeg_price(self, sk: str, close: float, now: int) -> list[Event]:
        base, quote, _ = self._quote(sk)
        if not quote or not any(g.relevant(quote, base) for g in self._depegs):
            return []
        self.state.pair_prices[f"{base}/{quote}"] = close
        out: list[Event] = []
        for guard in self._depegs:
            change = guard.observe(base, self.state.pair_prices, now)
            if change is None:
                continue
            asset = guard.config.asset
            if change.tripped:
                reason = f"{asset} depeg: {change.detail}"
                self._set(f"depeg:{asset}", Condition("SAFE_MODE", "depeg_guard", reason, now))
                action = guard.config.action
                out.append(RiskAlert(ts=now, rule="depeg_guard", action=action, detail=reason))
                if action == "flatten":
                    out.extend(self._flatten(now, lambda s, a=asset: self._quote(s)[1] == a))
            else:
                self._set(f"depeg:{asset}", None)
                detail = f"{asset} back: {change.detail}"
                out.append(RiskAlert(ts=now, rule="depeg_guard", action="resume", detail=detail))
        return out

    def _on_funding(self, event: FundingRate, now: int) -> list[Event]:
        if self._funding is None:
            return []
        sk = _symbol_key(event.venue, event.symbol)
        change = self._funding.observe(sk, event.symbol, event.rate, event.interval_h)
        if change is None:
            return []
        name = f"funding:{sk}"
        common = {"ts": now, "rule": "funding_guard", "venue": event.venue, "symbol": event.symbol}
        if not change.side:
            self._set(name, None)
            return [RiskAlert(action="clear", detail=change.detail, **common)]
        self._set(name, Condition("DEGRADED", "funding_guard", change.detail, now))
        config = self._funding.config
        out: list[Event] = [RiskAlert(action="block", detail=change.detail, **common)]
        if config.action == "trim":
            trims: list[Event] = []
            inst = self.state.instruments.get(sk)
            for key, qty in list(self.state.positions.items()):
                if key.partition("#")[2] != sk or qty * change.side <= EPS:
                    continue
                cut = round_qty(abs(qty) * config.trim_pct / 100.0, inst.lot_size if inst else 0.0)
                if cut > EPS:
                    trims.append(self._own_order(key, -math.copysign(cut, qty), now))
            detail = f"{change.detail}: cut {config.trim_pct:g}% of {len(trims)} positions"
            out.append(RiskAlert(action="trim", detail=detail, **common))
            out.extend(trims)
        return out

    # --- risk's own orders ----------------------------------------------------------------

    def _own_order(self, key: str, delta: float, now: int, model_tag: str = "") -> OrderCommand:
        strategy, venue, symbol = _split_key(key)
        return self._place(
            key, f"{venue}|{symbol}", strategy, venue, symbol, delta, now, model_tag, False
        )

    def _place(
        self,
        key: str,
        sk: str,
        strategy: str,
        venue: str,
        symbol: str,
        delta: float,
        now: int,
        model_tag: str,
        entry: bool,
        signal_ts: int | None = None,
    ) -> OrderCommand:
        state = self.state
        count = state.orders[key] = state.orders.get(key, 0) + 1
        order_id = (
            f"{strategy}-{symbol_token(symbol)}-{now if signal_ts is None else signal_ts}-{count}"
        )
        state.working[order_id] = _Working(key, sk, delta, entry)
        self._by_key.setdefault(key, []).append(order_id)
        state.net[sk] = state.net.get(sk, 0.0) + delta
        return OrderCommand(
            ts=now,
            action="new",
            client_order_id=order_id,
            strategy=strategy,
            venue=venue,
            symbol=symbol,
            side="buy" if delta > 0 else "sell",
            qty=abs(delta),
            model_tag=model_tag,
        )

    def _cancel(self, order_id: str, w: _Working, now: int) -> OrderCommand:
        strategy, venue, symbol = _split_key(w.key)
        self.state.cancels[order_id] = True
        return OrderCommand(
            ts=now,
            action="cancel",
            client_order_id=order_id,
            strategy=strategy,
            venue=venue,
            symbol=symbol,
            side="buy" if w.remaining > 0 else "sell",
            qty=abs(w.remaining),
        )

    def _cancel_entries(self, now: int) -> list[Event]:
        cancels = self.state.cancels
        return [
            self._cancel(order_id, w, now)
            for order_id, w in self.state.working.items()
            if w.entry and order_id not in cancels and abs(w.remaining) > EPS
        ]

    def _flatten(self, now: int, match: Callable[[str], bool]) -> list[Event]:
        """Cancel every working order and close every position of the symbols ``match``
        selects (per strategy, so the closing fills are attributed to their owners)."""
        state = self.state
        out: list[Event] = [
            self._cancel(order_id, w, now)
            for order_id, w in state.working.items()
            if match(w.symbol_key) and order_id not in state.cancels and abs(w.remaining) > EPS
        ]
        for key, qty in list(state.positions.items()):
            if abs(qty) > EPS and match(key.partition("#")[2]):
                out.append(self._own_order(key, -qty, now))
        return out

    # --- signals --------------------------------------------------------------------------

    def _held(self, key: str) -> float:
        ids = self._by_key.get(key)
        position = self.state.positions.get(key, 0.0)
        if not ids:
            return position + 0
        working = self.state.working
        return position + sum(working[i].remaining for i in ids)

    def _reject(self, signal: Signal, now: int, rule: str, reason: str) -> RiskDecision:
        return RiskDecision(
            ts=now,
            approved=False,
            strategy=signal.strategy,
            venue=signal.venue,
            symbol=signal.symbol,
            rule=rule,
            reason=reason,
        )

    def _on_signal(self, signal: Signal, now: int) -> list[Event]:
        state = self.state
        self._memo_gross = self._memo_open = None
        sk = f"{signal.venue}|{signal.symbol}"
        key = f"{signal.strategy}#{sk}"
        held = self._held(key)
        info = state.instruments.get(sk)
        lot = info.lot_size if info is not None else 0.0
        price = state.prices.get(sk)
        rule = self.sizing.rule(signal.strategy) if self._sizing_on else None
        sized = rule is not None and rule.mode != "signal"
        units = signal.target_position
        if units is not None:
            target = units
            if sized:
                target, why = self._sized_target(key, sk, signal, rule, price)  # type: ignore[arg-type]
                if target is None:
                    return [self._reject(signal, now, "sizing", f"cannot size: {why}")]
            if lot and target:
                rounded = math.copysign(round_qty(abs(target), lot), target)
                if not rounded:
                    reason = f"target {abs(target):.8g} is below one lot ({lot:g})"
                    return [self._reject(signal, now, "lot_size", reason)]
                target = rounded
            delta = target - held
        else:
            size = signal.size or 0.0
            if sized:
                unit, why = self._unit(sk, signal, rule, price)  # type: ignore[arg-type]
                if not unit:
                    return [self._reject(signal, now, "sizing", f"cannot size: {why}")]
                size *= unit
            if lot:
                rounded = round_qty(size, lot)
                if not rounded:
                    reason = f"size {size:.8g} is below one lot ({lot:g})"
                    return [self._reject(signal, now, "lot_size", reason)]
                size = rounded
            delta = size if signal.side == "buy" else -size
        if abs(delta) <= EPS:
            return []
        before = state.net.get(sk, 0.0)
        if sized and rule.cap:  # type: ignore[union-attr]
            delta = self._capped(sk, delta, before, price)
        if lot and abs(before + delta) > abs(before) + EPS:
            qty = round_qty(abs(delta), lot)
            if not qty:
                return []  # less than a lot away from the target: nothing to order
            delta = math.copysign(qty, delta)
        quote = self._quote(sk)[1] if self._depegs else ""
        ctx = _Ctx(signal, sk, delta, before, price, quote, now)
        if (
            info is not None
            and info.kind == "spot"
            and not self._limits.spot_shorts
            and before + delta < -EPS
            and ctx.increases
        ):
            reason = (
                f"{signal.symbol} is spot: net position {before + delta:g} would be short "
                "(set [risk] spot_shorts = true for a margin account)"
            )
            return [self._reject(signal, now, "spot_short", reason)]
        if info is not None and info.min_notional and ctx.increases:
            if price is None:
                reason = f"no price seen for {signal.symbol} yet"
                return [self._reject(signal, now, "min_notional", reason)]
            notional = ctx.qty * price
            if notional < info.min_notional:
                reason = (
                    f"order notional {notional:.2f} is below the instrument's min notional "
                    f"{info.min_notional:g}"
                )
                return [self._reject(signal, now, "min_notional", reason)]
        for check in self.checks:
            breach = check(ctx)
            if breach is not None:
                return [self._reject(signal, now, breach[0], breach[1])]
        order = self._place(
            key,
            sk,
            signal.strategy,
            signal.venue,
            signal.symbol,
            delta,
            now,
            signal.model_tag,
            ctx.increases,
            signal.ts,
        )
        if self._limits.brackets and ctx.increases:
            order = _bracket(order, signal, info.tick_size if info is not None else 0.0)
        if sized and units is not None:
            if units:
                state.sized[key] = [units, held + delta]
            else:
                state.sized.pop(key, None)
        if self._limits.max_orders_per_minute is not None:
            state.strategy_orders.setdefault(signal.strategy, []).append(now)
        if self._limits.max_venue_orders_per_minute is not None:
            state.venue_orders.setdefault(signal.venue, []).append(now)
        if self._breaker is not None:
            self._breaker.sent(signal.venue, order.client_order_id)
        return [order]

    # --- sizing ---------------------------------------------------------------------------

    def _unit(
        self, sk: str, signal: Signal, rule: SizingRule, price: float | None
    ) -> tuple[float, str]:
        track = self.state.equity
        series = self.state.returns.get(sk)
        return unit_qty(
            rule,
            price,
            track.equity if track is not None else None,
            signal.atr,
            series.rets if series is not None else None,
            series.interval if series is not None else "",
        )

    def _sized_target(
        self, key: str, sk: str, signal: Signal, rule: SizingRule, price: float | None
    ) -> tuple[float | None, str]:
        """The quantity of a target in units. A repeated target keeps the quantity it was
        sized to; a smaller one on the same side scales it down proportionally; a larger
        one adds the new units at today's unit size (pyramiding); anything else is sized
        afresh."""
        units = signal.target_position or 0.0
        if not units:
            return 0.0, ""
        last = self.state.sized.get(key)
        if last is not None:
            last_units, last_qty = last
            if units == last_units:
                return last_qty, ""
            if (units > 0) == (last_units > 0):
                if abs(units) < abs(last_units):
                    return last_qty * units / last_units, ""
                unit, why = self._unit(sk, signal, rule, price)
                if not unit:
                    return None, why
                return last_qty + (units - last_units) * unit, ""
        unit, why = self._unit(sk, signal, rule, price)
        if not unit:
            return None, why
        return units * unit, ""

    def _capped(self, sk: str, delta: float, before: float, price: float | None) -> float:
        """A sized order scaled down to fit the quantity and exposure caps (an order that
        grows exposure only); the checks still run on the result."""
        after = before + delta
        if abs(after) <= abs(before) + EPS:
            return delta
        lim = self._limits
        room = math.inf  # the largest |after| the caps allow
        if lim.max_position is not None:
            room = lim.max_position
        if price:
            if lim.max_symbol_exposure is not None:
                room = min(room, lim.max_symbol_exposure / price)
            if lim.max_venue_exposure is not None or lim.max_total_exposure is not None:
                venue_gross, total_gross = self._gross(self._venue(sk))
                held = abs(before) * price
                if lim.max_venue_exposure is not None:
                    room = min(room, (lim.max_venue_exposure - venue_gross + held) / price)
                if lim.max_total_exposure is not None:
                    room = min(room, (lim.max_total_exposure - total_gross + held) / price)
        largest = (
            room - abs(before) if (after > 0) == (before > 0) or not before else room + abs(before)
        )
        if price and lim.max_order_notional is not None:
            largest = min(largest, lim.max_order_notional / price)
        if largest <= 1e-9 * max(1.0, abs(before), abs(delta)):
            return delta  # no room (rounding dust aside): let the rail reject it with its numbers
        if abs(delta) > largest:
            return math.copysign(largest, delta)
        return delta

    # --- the checks (rules as data: compiled into ``self.checks`` by ``_bind``) ----------

    def _check_kill(self, c: _Ctx) -> Breach:
        if self.state.killed:
            return "kill_switch", f"trading halted: {self.state.kill_reason or 'kill switch on'}"
        if not self._limits.trading_enabled:
            return "kill_switch", "trading disabled: trading_enabled = false in the config"
        return None

    def _check_halt(self, c: _Ctx) -> Breach:
        halt = self._halt
        if halt is not None:
            return halt.rule, f"trading halted: {halt.reason}"
        return None

    def _check_denylist(self, c: _Ctx) -> Breach:
        if c.signal.symbol in self._denied:
            return "symbol_denylist", f"{c.signal.symbol} is in the denylist"
        return None

    def _check_allowlist(self, c: _Ctx) -> Breach:
        if c.signal.symbol not in self._allowed:
            return "symbol_allowlist", f"{c.signal.symbol} is not in the allowlist"
        return None

    def _check_breaker(self, c: _Ctx) -> Breach:
        allowed, why = self._breaker.allows(c.signal.venue)  # type: ignore[union-attr]
        return None if allowed else ("venue_breaker", why)

    def _check_soft(self, c: _Ctx) -> Breach:
        soft = self._soft
        if soft is not None and c.increases:
            return soft.rule, f"safe mode, entries blocked: {soft.reason}"
        return None

    def _check_depeg(self, c: _Ctx) -> Breach:
        condition = self._depegged.get(c.quote) if self._depegged else None
        if condition is not None and c.increases:
            return "depeg_guard", f"entries quoted in {c.quote} halted: {condition.reason}"
        return None

    def _check_funding(self, c: _Ctx) -> Breach:
        state = self.state.funding.get(c.sk)
        if state is None or not state.side or not c.increases:
            return None
        if (c.after > 0) == (state.side > 0):
            side = "long" if state.side > 0 else "short"
            return (
                "funding_guard",
                f"{side} entries in {c.signal.symbol} blocked: funding {100 * state.rate:+.4f}% "
                f"beyond {self._funding.config.threshold_pct:g}%",  # type: ignore[union-attr]
            )
        return None

    def _rate(self, times: list[int] | None, now: int, limit: int) -> int:
        if not times:
            return 0
        horizon = now - MINUTE_NS
        drop = 0
        while drop < len(times) and times[drop] <= horizon:
            drop += 1
        if drop:
            del times[:drop]
        return len(times) if len(times) >= limit else 0

    def _check_strategy_rate(self, c: _Ctx) -> Breach:
        limit = self._limits.max_orders_per_minute
        strategy = c.signal.strategy
        count = self._rate(self.state.strategy_orders.get(strategy), c.now, limit)  # type: ignore[arg-type]
        if count:
            return (
                "strategy_rate",
                f"{strategy} sent {count} orders in the last minute (max {limit})",
            )
        return None

    def _check_venue_rate(self, c: _Ctx) -> Breach:
        limit = self._limits.max_venue_orders_per_minute
        venue = c.signal.venue
        count = self._rate(self.state.venue_orders.get(venue), c.now, limit)  # type: ignore[arg-type]
        if count:
            return "venue_rate", f"{count} orders to {venue} in the last minute (max {limit})"
        return None

    def _no_price(self, c: _Ctx, rule: str) -> Breach:
        return rule, f"no price seen for {c.signal.symbol} yet"

    def _check_min_notional(self, c: _Ctx) -> Breach:
        if not c.increases:
            return None
        if c.price is None:
            return self._no_price(c, "min_order_notional")
        notional = c.qty * c.price
        limit = self._limits.min_order_notional
        if notional < limit:  # type: ignore[operator]
            return "min_order_notional", f"notional {notional:.2f} < minimum {limit:.2f}"
        return None

    def _check_max_notional(self, c: _Ctx) -> Breach:
        if c.price is None:
            return self._no_price(c, "max_order_notional")
        notional = c.qty * c.price
        limit = self._limits.max_order_notional
        if notional > limit * TOL:  # type: ignore[operator]
            return "max_order_notional", f"notional {notional:.2f} > limit {limit:.2f}"
        return None

    def _check_max_position(self, c: _Ctx) -> Breach:
        limit = self._limits.max_position
        if c.increases and abs(c.after) > limit * TOL + EPS:  # type: ignore[operator]
            return "max_position", f"position {c.after:g} would exceed limit {limit:g}"
        return None

    def _check_symbol_exposure(self, c: _Ctx) -> Breach:
        if not c.increases:
            return None
        if c.price is None:
            return self._no_price(c, "symbol_exposure")
        exposure = abs(c.after) * c.price
        limit = self._limits.max_symbol_exposure
        if exposure > limit * TOL:  # type: ignore[operator]
            return (
                "symbol_exposure",
                f"{c.signal.symbol} exposure {exposure:.2f} would exceed {limit:.2f}",
            )
        return None

    def _gross(self, venue: str) -> tuple[float, float]:
        """Gross exposure (sum of |net| * price) on ``venue`` and in total (computed once
        per signal: the books do not move while one is decided)."""
        memo = self._memo_gross
        if memo is not None and memo[0] == venue:
            return memo[1]
        prices, venues = self.state.prices, self._venues
        on_venue = total = 0.0
        for sk, qty in self.state.net.items():
            if -EPS <= qty <= EPS:
                continue
            price = prices.get(sk)
            if price is None:
                continue
            value = abs(qty) * price
            total += value
            v = venues.get(sk)
            if v is None:
                v = self._venue(sk)
            if v == venue:
                on_venue += value
        self._memo_gross = (venue, (on_venue, total))
        return on_venue, total

    def _check_gross_exposure(self, c: _Ctx) -> Breach:
        if not c.increases:
            return None
        if c.price is None:
            return self._no_price(c, "total_exposure")
        lim = self._limits
        venue = c.signal.venue
        on_venue, total = self._gross(venue)
        change = (abs(c.after) - abs(c.before)) * c.price
        if lim.max_venue_exposure is not None:
            after = on_venue + change
            if after > lim.max_venue_exposure * TOL:
                return (
                    "venue_exposure",
                    f"{venue} gross exposure {after:.2f} would exceed {lim.max_venue_exposure:.2f}",
                )
        if lim.max_total_exposure is not None:
            after = total + change
            if after > lim.max_total_exposure * TOL:
                return (
                    "total_exposure",
                    f"total gross exposure {after:.2f} would exceed {lim.max_total_exposure:.2f}",
                )
        return None

    def _open_symbols(self, exclude: str) -> list[str]:
        memo = self._memo_open
        if memo is not None and memo[0] == exclude:
            return memo[1]
        held = [sk for sk, q in self.state.net.items() if (q > EPS or q < -EPS) and sk != exclude]
        self._memo_open = (exclude, held)
        return held

    def _check_open_positions(self, c: _Ctx) -> Breach:
        if not c.opening:
            return None
        limit = self._limits.max_open_positions
        count = len(self._open_symbols(c.sk))
        if count >= limit:  # type: ignore[operator]
            return (
                "max_open_positions",
                f"{count} positions open, opening {c.signal.symbol} would exceed {limit}",
            )
        return None

    def _check_correlation(self, c: _Ctx) -> Breach:
        if not c.opening:
            return None
        config = self._limits.correlation
        direction = 1.0 if c.after > 0 else -1.0
        net = self.state.net
        for other in self._open_symbols(c.sk):
            corr = self._correlation(c.sk, other)
            if corr is None:
                continue
            effective = corr * direction * (1.0 if net[other] > 0 else -1.0)
            if effective > config.max:  # type: ignore[union-attr]
                side = "long" if net[other] > 0 else "short"
                return (
                    "correlation",
                    f"{c.signal.symbol} returns correlate {corr:+.3f} with "
                    f"{other.partition('|')[2]} (held {side}): {effective:+.3f} > max "
                    f"{config.max:g}",  # type: ignore[union-attr]
                )
        return None

    def _correlation(self, a: str, b: str) -> float | None:
        """Pearson correlation of the two symbols' returns over their last common bars
        (None below ``min_periods``); cached until either series moves. Symbols whose bars
        share their times (the usual case) skip the alignment, and each series' own sums
        are shared by all its pairs."""
        returns = self.state.returns
        sa, sb = returns.get(a), returns.get(b)
        if sa is None or sb is None or not sa.ts or not sb.ts:
            return None
        stamp = (sa.ts[-1], sb.ts[-1])
        cached = self._corr_cache.get((a, b))
        if cached is not None and cached[:2] == stamp:
            return cached[2]
        config = self._limits.correlation
        window, least = config.window, config.min_periods  # type: ignore[union-attr]
        ta, xa, na, sxa, sqa = self._series_sums(a, sa, window)
        tb, xb, _, sxb, sqb = self._series_sums(b, sb, window)
        if ta == tb:
            n = na
            sxy = sum(map(operator.mul, xa, xb))
            varx, vary = n * sqa - sxa * sxa, n * sqb - sxb * sxb
            cov = n * sxy - sxa * sxb
        else:  # align on the bar times both have
            other = dict(zip(sb.ts, sb.rets, strict=True))
            xs: list[float] = []
            ys: list[float] = []
            for ts, r in zip(sa.ts, sa.rets, strict=True):
                y = other.get(ts)
                if y is not None:
                    xs.append(r)
                    ys.append(y)
            xs, ys = xs[-window:], ys[-window:]
            n = len(xs)
            sx, sy = sum(xs), sum(ys)
            varx = n * sum(map(operator.mul, xs, xs)) - sx * sx
            vary = n * sum(map(operator.mul, ys, ys)) - sy * sy
            cov = n * sum(map(operator.mul, xs, ys)) - sx * sy
        value: float | None = None
        if n >= least and varx > 0 and vary > 0:
            value = max(-1.0, min(1.0, cov / math.sqrt(varx * vary)))
        self._corr_cache[(a, b)] = (stamp[0], stamp[1], value)
        return value

    def _series_sums(
        self, key: str, series: ReturnSeries, window: int
    ) -> tuple[list[int], list[float], int, float, float]:
        """The last ``window`` times and returns of a series, their count, sum and sum of
        squares; cached until the series moves."""
        cached = self._sums_cache.get(key)
        if cached is not None and cached[0] == series.ts[-1]:
            return cached[1]
        ts, xs = series.ts[-window:], series.rets[-window:]
        sums = (ts, xs, len(xs), sum(xs), sum(map(operator.mul, xs, xs)))
        self._sums_cache[key] = (series.ts[-1], sums)
        return sums

    # --- snapshot -------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state)

    def restore(self, data: bytes) -> None:
        self.state = msgspec.msgpack.decode(data, type=RiskState)
        self._dirty = False
        self._bind()


def _bracket(order: OrderCommand, signal: Signal, tick: float) -> OrderCommand:
    """An entry carrying the signal's stop and target: the order manager places them as an
    OCO pair once the entry fills (docs/orders.md). Prices go on the instrument's tick grid,
    away from the entry: a long's stop down and target up, a short's the other way."""
    long = order.side == "buy"
    legs: dict[str, float] = {}
    if signal.stop is not None:
        legs["stop_loss"] = round_price(signal.stop, tick, up=not long)
    if signal.target is not None:
        legs["take_profit"] = round_price(signal.target, tick, up=long)
    if signal.atr is not None:
        legs["atr"] = signal.atr
    if "stop_loss" not in legs and "take_profit" not in legs:
        return order
    return msgspec.structs.replace(order, **legs)
