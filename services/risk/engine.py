"""Pre-trade risk: a pure fold over signals, prices, fills, equity, instruments, funding and
governance (``decide(event, now)``; ``now`` is the event time, never the wall clock).

A signal's target position (in units, sized by ``[sizing]``) becomes an order for the
difference between the target and what the strategy holds plus what it already has
working, so a repeated signal never doubles an order. The order then runs through the rails
(``services/risk/rails.py``); the first breach rejects with a ``RiskDecision`` naming the
rule and the numbers.

Hard breaches (equity floor, max drawdown, daily loss) halt trading (and flatten when
configured); soft breaches cancel risk's working entry orders, ask the order manager to
tighten stops (a ``RiskAlert``) and block entries (SAFE_MODE) or only warn (DEGRADED).
Every change of the combined status is a ``SystemStatus`` on ``sys.status.risk`` and every
guard action a ``RiskAlert`` on ``ord.alert.<rule>``. docs/risk.md is the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import msgspec

from contracts.events import (
    Bar,
    EquitySnapshot,
    Event,
    ExecutionReport,
    FeedState,
    FeedStatus,
    FundingRate,
    Instrument,
    RiskAlert,
    RiskDecision,
    Signal,
)
from contracts.governance_events import GOVERNANCE_RULE, PlaybookAction
from contracts.keys import InstrumentId, KeyTable
from contracts.model_events import AllocationDecided
from contracts.system_events import GovernanceCommand
from services.risk.book import EPS, Book
from services.risk.breaker import Transition, VenueBreaker
from services.risk.budgets import EQUITY_MODES, BudgetGate
from services.risk.budgets import RULE as BUDGET
from services.risk.correlation import Correlations
from services.risk.equity import EquityRails
from services.risk.feed_guard import RULE as STALE_DATA
from services.risk.feed_guard import FeedGuard
from services.risk.guards import Depeg, DepegState, Funding
from services.risk.limits import GuardsConfig, InstrumentSpec, RiskLimits, SizingConfig
from services.risk.playbook_gate import PlaybookGate
from services.risk.rails import Check, OrderContext, compile_rails
from services.risk.sizing import Sizer, bracket, round_qty, split_symbol
from services.risk.state import Condition, InstrumentInfo, RiskState
from services.risk.status import StatusBoard


class RiskEngine:
    snapshot_version: ClassVar[int] = 5  # v5: governance's allocator budgets

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
        self._limits = limits or RiskLimits()
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
        return self._limits.equity_rails or any(
            r.mode in ("pct_equity", "turtle", "vol_target") for r in self.sizing.rules
        )

    def _bind(self) -> None:
        """Build the collaborators over the state and compile the rails (after
        construction, a change of limits and a restore)."""
        lim, state = self._limits, self.state
        keys = KeyTable(
            (
                *state.prices,
                *state.bar_times,
                *state.instruments,
                *state.net,
                *state.orders,
                *state.positions,
                *state.feeds,
            )
        )
        self._markets = keys.markets
        self._market = keys.market
        self._book_of = keys.book
        for spec in self.instrument_specs:
            market = self._market(spec.venue, spec.symbol)
            if market not in state.instruments:
                state.instruments[market] = self._info(spec)
        self._quotes: dict[InstrumentId, tuple[str, str, bool]] = {}
        self._prices, self._bar_times = state.prices, state.bar_times
        self._status = StatusBoard(state)
        self._book = Book(state)
        self._equity = EquityRails(lim, state, self._status, self._book)
        self._sizer = Sizer(state, self._book, lim)
        self._breaker = VenueBreaker(lim.breaker, state.breakers) if lim.breaker else None
        self._depegs = [
            Depeg(g, state.depeg.setdefault(g.asset, DepegState())) for g in self.guards.depegs
        ]
        self._funding = Funding(self.guards.funding, state.funding) if self.guards.funding else None
        self._feeds = FeedGuard(state.feeds)
        self._gate = PlaybookGate(state.playbooks)
        self._budgets = BudgetGate(state, self._book)
        rules = self.sizing.rules
        self._sizing_on = any(r.sized for r in rules)
        vol = max((r.vol_window for r in rules if r.mode == "vol_target"), default=0)
        corr = lim.correlation
        keep = max(vol, corr.window if corr else 0)
        self._returns = (
            Correlations(state.returns, keep, corr.interval if corr else "") if keep else None
        )
        self._plain_bars = not (self._breaker or self._returns or self._depegs)
        # each input type's handler; with ``_plain_bars`` a bar (nearly every input) only
        # sets its price, in ``decide`` itself
        self._handlers: dict[type, Callable[[Any, int], list[Event]]] = {
            Bar: self._on_bar,
            Signal: self._on_signal,
            ExecutionReport: self._on_report,
            EquitySnapshot: self._equity.observe,
            Instrument: self._on_instrument,
            FundingRate: self._on_funding,
            FeedStatus: self._on_feed_status,
            GovernanceCommand: self._on_governance,
            PlaybookAction: self._gate.apply,
            AllocationDecided: self._budgets.apply,
        }
        rails = compile_rails(
            lim,
            state,
            self._status,
            self._book,
            self._breaker,
            self._funding,
            bool(self._depegs),
            self._returns,
        )
        self.checks: tuple[Check, ...] = tuple(check for _, check in rails)
        self.rules: tuple[str, ...] = tuple(name for name, _ in rails)

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

    def _quote(self, market: InstrumentId) -> tuple[str, str, bool]:
        """(base, quote, perpetual) of a market: the instrument's, else the symbol's."""
        cached = self._quotes.get(market)
        if cached is None:
            info = self.state.instruments.get(market)
            if info is not None and info.quote:
                cached = (info.base, info.quote, info.kind == "perpetual")
            else:
                cached = split_symbol(market.symbol)
            self._quotes[market] = cached
        return cached

    # --- the fold -------------------------------------------------------------------------

    def decide(self, event: Event, now: int) -> list[Event]:
        if self._plain_bars and isinstance(event, Bar):  # nearly every input: only the price
            try:
                market = self._markets[event.venue][event.symbol]
            except KeyError:
                market = self._market(event.venue, event.symbol)
            self._prices[market] = event.close
            ts, times = event.ts, self._bar_times
            if ts > times.get(market, 0):
                times[market] = ts
            return []
        breaker = self._breaker
        out: list[Event] = []
        if breaker is not None and breaker.next_deadline is not None:
            for t in breaker.tick(now):
                out.extend(self._on_transition(t, now))
        handler = self._handlers.get(type(event))
        produced = handler(event, now) if handler is not None else None
        if produced:
            out.extend(produced)
        if self._status.changed:
            status = self._status.publish(now)
            if status is not None:
                out.insert(0, status)
        return out

    def status(self) -> Condition:
        """The combined status: the most severe condition, the others named in the reason."""
        return self._status.combined()

    # --- governance -----------------------------------------------------------------------

    def _on_governance(self, event: GovernanceCommand, now: int) -> list[Event]:
        """A kill halts at once; the command itself is the status fact (``keel status``
        reads it), so a kill publishes nothing. A resume also re-arms the hard breaches.
        The other commands (enable, promote, rollback) are the governance role's inputs."""
        if event.action not in ("kill", "resume"):
            return []
        state = self.state
        state.killed = event.action == "kill"
        state.kill_reason = event.reason
        if state.killed:
            reason = f"trading halted: {event.reason or 'kill switch on'}"
            self._status.set("kill", Condition("HALTED", "kill_switch", reason, now), False)
            return []
        self._status.set("kill", None)
        self._status.clear("halt:", "soft:")
        self._equity.rearm()
        return []

    # --- market ---------------------------------------------------------------------------

    def _on_bar(self, bar: Bar, now: int) -> list[Event]:
        try:
            market = self._markets[bar.venue][bar.symbol]
        except KeyError:
            market = self._market(bar.venue, bar.symbol)
        self._prices[market] = bar.close
        ts, times = bar.ts, self._bar_times
        if ts > times.get(market, 0):
            times[market] = ts
        if self._returns is not None:
            self._returns.record(market, bar)
        if self._depegs:
            return self._on_depeg_price(market, bar.close, now)
        return []

    def _on_instrument(self, event: Instrument, now: int) -> list[Event]:
        market = self._market(event.venue, event.symbol)
        self.state.instruments[market] = self._info(event)
        self._quotes.pop(market, None)
        if not event.active:
            why = "the venue lists it as inactive"
            return self._on_feed(market, "delisted", False, event.ts, why, now)
        return []

    def _on_feed_status(self, event: FeedStatus, now: int) -> list[Event]:
        market = self._market(event.venue, event.symbol)
        return self._on_feed(market, event.state, event.fresh, event.ts, event.reason, now)

    def _on_feed(
        self, market: InstrumentId, state: FeedState, fresh: bool, ts: int, reason: str, now: int
    ) -> list[Event]:
        """The stale-data guard (``services/risk/feed_guard.py``): block or lift entries on
        the market, keep the venue's condition, alert on a block and on its end."""
        change = self._feeds.observe(market, state, fresh, ts, reason)
        if change is None:
            return []
        venue = market.venue
        self._status.set(f"feed:{venue}", self._feeds.condition(venue))
        if not change.action:
            return []
        return [
            RiskAlert(
                ts=now,
                rule=STALE_DATA,
                action=change.action,
                detail=change.detail,
                venue=venue,
                symbol=market.symbol,
            )
        ]

    # --- executions -----------------------------------------------------------------------

    def _on_report(self, report: ExecutionReport, now: int) -> list[Event]:
        book = self._book_of(report.strategy, self._market(report.venue, report.symbol))
        refused_cancel = self._book.apply(report, book)
        if self._breaker is None or refused_cancel:
            return []
        t = self._breaker.report(report.venue, report.client_order_id, report.status, now)
        return self._on_transition(t, now) if t is not None else []

    def _on_transition(self, t: Transition, now: int) -> list[Event]:
        name = f"breaker:{t.venue}"
        if t.after == "CLOSED":
            self._status.set(name, None)
        else:
            reason = f"venue {t.venue} breaker {t.after}: {t.reason}"
            self._status.set(name, Condition("DEGRADED", "venue_breaker", reason, now))
        action = t.after.lower()
        detail = f"venue {t.venue} {t.before} -> {t.after}: {t.reason}"
        return [
            RiskAlert(ts=now, rule="venue_breaker", action=action, detail=detail, venue=t.venue)
        ]

    # --- guards ---------------------------------------------------------------------------

    def _on_depeg_price(self, market: InstrumentId, close: float, now: int) -> list[Event]:
        base, quote, _ = self._quote(market)
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
                condition = Condition("SAFE_MODE", "depeg_guard", reason, now)
                self._status.set(f"depeg:{asset}", condition)
                action = guard.config.action
                out.append(RiskAlert(ts=now, rule="depeg_guard", action=action, detail=reason))
                if action == "flatten":
                    out.extend(self._book.flatten(now, lambda m, a=asset: self._quote(m)[1] == a))
            else:
                self._status.set(f"depeg:{asset}", None)
                detail = f"{asset} back: {change.detail}"
                out.append(RiskAlert(ts=now, rule="depeg_guard", action="resume", detail=detail))
        return out

    def _on_funding(self, event: FundingRate, now: int) -> list[Event]:
        if self._funding is None:
            return []
        market = self._market(event.venue, event.symbol)
        change = self._funding.observe(market, event.rate, event.interval_h)
        if change is None:
            return []
        name = f"funding:{market}"
        common = {"ts": now, "rule": "funding_guard", "venue": event.venue, "symbol": event.symbol}
        if not change.side:
            self._status.set(name, None)
            return [RiskAlert(action="clear", detail=change.detail, **common)]
        self._status.set(name, Condition("DEGRADED", "funding_guard", change.detail, now))
        config = self._funding.config
        out: list[Event] = [RiskAlert(action="block", detail=change.detail, **common)]
        if config.action == "trim":
            trims: list[Event] = []
            inst = self.state.instruments.get(market)
            lot = inst.lot_size if inst else 0.0
            for book, qty in list(self.state.positions.items()):
                if book.instrument != market or qty * change.side <= EPS:
                    continue
                cut = round_qty(abs(qty) * config.trim_pct / 100.0, lot)
                if cut > EPS:
                    trims.append(self._book.place(book, -math.copysign(cut, qty), now))
            detail = f"{change.detail}: cut {config.trim_pct:g}% of {len(trims)} positions"
            out.append(RiskAlert(action="trim", detail=detail, **common))
            out.extend(trims)
        return out

    # --- signals --------------------------------------------------------------------------

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
        state, positions = self.state, self._book
        positions.new_decision()
        market = self._market(signal.venue, signal.symbol)
        book = self._book_of(signal.strategy, market)
        held = positions.held(book)
        info = state.instruments.get(market)
        lot = info.lot_size if info is not None else 0.0
        price = state.prices.get(market)
        rule = self.sizing.rule(signal.strategy) if self._sizing_on else None
        if rule is not None and not rule.sized:
            rule = None  # this strategy's numbers are quantities
        budget = self._budgets.weight(signal.strategy)
        # the playbooks' scale, and the budget when a unit is a share of equity
        scale = self._gate.factor
        if budget is not None and rule is not None and rule.mode in EQUITY_MODES:
            scale *= budget
        units = signal.target_position
        sized = 0.0
        if units is not None:
            target = units
            if rule is not None:
                sized_target, why = self._sizer.target(book, signal, units, rule, price)
                if sized_target is None:
                    return [self._reject(signal, now, "sizing", f"cannot size: {why}")]
                target = sized = sized_target
            if scale != 1.0:
                target *= scale
            if lot and target:
                rounded = math.copysign(round_qty(abs(target), lot), target)
                if not rounded:
                    reason = f"target {abs(target):.8g} is below one lot ({lot:g})"
                    return [self._reject(signal, now, "lot_size", reason)]
                target = rounded
            delta = target - held
        else:
            size = signal.size or 0.0
            if rule is not None:
                unit, why = self._sizer.unit(market, signal, rule, price)
                if not unit:
                    return [self._reject(signal, now, "sizing", f"cannot size: {why}")]
                size *= unit
            if scale != 1.0:
                size *= scale
            if lot:
                rounded = round_qty(size, lot)
                if not rounded:
                    reason = f"size {size:.8g} is below one lot ({lot:g})"
                    return [self._reject(signal, now, "lot_size", reason)]
                size = rounded
            delta = size if signal.side == "buy" else -size
        if abs(delta) <= EPS:
            return []
        before = state.net.get(market, 0.0)
        if rule is not None and rule.cap:
            delta = self._sizer.capped(market, delta, before, price)
        if budget is not None:
            delta, why = self._budgets.fit(budget, self._gate.factor, book, held, delta, price)
            if why is not None:
                return [self._reject(signal, now, BUDGET, why)]
        if lot and abs(before + delta) > abs(before) + EPS:
            qty = round_qty(abs(delta), lot)
            if not qty:
                return []  # less than a lot away from the target: nothing to order
            delta = math.copysign(qty, delta)
        quote = self._quote(market)[1] if self._depegs else ""
        ctx = OrderContext(signal, market, delta, before, price, quote, now)
        refusal = self._gate.refusal(signal.strategy, ctx.increases, now)
        if refusal is not None:
            return [self._reject(signal, now, GOVERNANCE_RULE, refusal)]
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
        order = positions.place(book, delta, now, signal.model_tag, ctx.increases, signal.ts)
        if self._limits.brackets and ctx.increases:
            order = bracket(order, signal, info.tick_size if info is not None else 0.0)
        if rule is not None and units is not None:  # unscaled: a scale never compounds
            self._sizer.remember(book, units, (held + delta) / scale if scale > 0.0 else sized)
        if self._limits.max_orders_per_minute is not None:
            state.strategy_orders.setdefault(signal.strategy, []).append(now)
        if self._limits.max_venue_orders_per_minute is not None:
            state.venue_orders.setdefault(signal.venue, []).append(now)
        if self._breaker is not None:
            self._breaker.sent(signal.venue, order.client_order_id)
        return [order]

    # --- snapshot -------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state)

    def restore(self, data: bytes) -> None:
        """The state of a snapshot of this ``snapshot_version``; bytes of any other layout
        raise (``msgspec.ValidationError`` or ``DecodeError``)."""
        self.state = msgspec.msgpack.decode(data, type=RiskState)
        self._bind()
