"""The rails: pre-trade checks as data. ``compile_rails`` turns the configuration into an
ordered tuple of named checks; each is a function of one order's ``OrderContext`` (and of
the state it was compiled over) that returns ``None`` or the breach: the rule and a reason
with the numbers. The engine runs them in order and rejects on the first breach.

Rails that cap exposure only apply to orders that grow the market's absolute net exposure,
so a reduction is never blocked by them. docs/risk.md lists the rules in order.
"""

from __future__ import annotations

from collections.abc import Callable

from contracts.events import Signal
from contracts.intervals import UNIT_NS
from contracts.keys import InstrumentId
from services.risk.book import EPS, Book
from services.risk.breaker import VenueBreaker
from services.risk.correlation import Correlations
from services.risk.feed_guard import RULE as STALE_DATA
from services.risk.feed_guard import describe, iso
from services.risk.guards import Funding
from services.risk.limits import CorrelationConfig, RiskLimits
from services.risk.state import RiskState
from services.risk.status import StatusBoard

TOL = 1 + 1e-9  # caps compare with this relative slack: a capped order is exactly at the cap
MINUTE_NS = UNIT_NS["m"]

Breach = tuple[str, str] | None


class OrderContext:
    """What the rails look at for one order: ``delta`` to go from ``before`` (the market's
    net) to ``after``; ``quote`` is filled only when a depeg guard needs it."""

    __slots__ = (
        "after",
        "before",
        "delta",
        "increases",
        "market",
        "now",
        "opening",
        "price",
        "qty",
        "quote",
        "signal",
    )

    def __init__(
        self,
        signal: Signal,
        market: InstrumentId,
        delta: float,
        before: float,
        price: float | None,
        quote: str,
        now: int,
    ) -> None:
        self.signal = signal
        self.now = now
        self.market = market
        self.delta = delta
        self.qty = abs(delta)
        self.before = before
        after = self.after = before + delta
        self.increases = abs(after) > abs(before) + EPS
        self.opening = abs(before) <= EPS and abs(after) > EPS
        self.price = price
        self.quote = quote


Check = Callable[[OrderContext], Breach]


def compile_rails(
    limits: RiskLimits,
    state: RiskState,
    status: StatusBoard,
    book: Book,
    breaker: VenueBreaker | None,
    funding: Funding | None,
    depeg: bool,
    correlations: Correlations | None,
) -> tuple[tuple[str, Check], ...]:
    """The configured rails, in their order (docs/risk.md, The rails)."""
    lim = limits
    rails: list[tuple[str, Check]] = [("kill", kill(state, lim)), ("halt", halt(status))]
    if lim.denied_symbols:
        rails.append(("denylist", denylist(frozenset(lim.denied_symbols))))
    if lim.allowed_symbols:
        rails.append(("allowlist", allowlist(frozenset(lim.allowed_symbols))))
    if breaker is not None:
        rails.append(("breaker", venue_breaker(breaker)))
    rails.append(("stale_data", stale_data(state)))
    rails.append(("stale_signal", stale_signal(state, lim.max_signal_lag, lim.max_signal_lag_ns)))
    if lim.equity_rails:
        rails.append(("soft", soft(status)))
    if depeg:
        rails.append(("depeg", depegged(status)))
    if funding is not None:
        rails.append(("funding", funding_side(funding, state)))
    if lim.max_orders_per_minute is not None:
        rails.append(("strategy_rate", strategy_rate(state, lim.max_orders_per_minute)))
    if lim.max_venue_orders_per_minute is not None:
        rails.append(("venue_rate", venue_rate(state, lim.max_venue_orders_per_minute)))
    if lim.min_order_notional is not None:
        rails.append(("min_notional", min_notional(lim.min_order_notional)))
    if lim.max_order_notional is not None:
        rails.append(("max_notional", max_notional(lim.max_order_notional)))
    if lim.max_position is not None:
        rails.append(("max_position", max_position(lim.max_position)))
    if lim.max_symbol_exposure is not None:
        rails.append(("symbol_exposure", symbol_exposure(lim.max_symbol_exposure)))
    if lim.max_venue_exposure is not None or lim.max_total_exposure is not None:
        rails.append(
            ("gross_exposure", gross_exposure(book, lim.max_venue_exposure, lim.max_total_exposure))
        )
    if lim.max_open_positions is not None:
        rails.append(("open_positions", open_positions(book, lim.max_open_positions)))
    if lim.correlation is not None and correlations is not None:
        rails.append(("correlation", correlation(book, correlations, lim.correlation)))
    return tuple(rails)


def _no_price(c: OrderContext, rule: str) -> Breach:
    return rule, f"no price seen for {c.signal.symbol} yet"


def _recent(times: list[int] | None, now: int, limit: int) -> int:
    """How many of ``times`` fall in the minute ending at ``now`` once that reaches
    ``limit``, else 0 (older times are dropped)."""
    if not times:
        return 0
    horizon = now - MINUTE_NS
    drop = 0
    while drop < len(times) and times[drop] <= horizon:
        drop += 1
    if drop:
        del times[:drop]
    return len(times) if len(times) >= limit else 0


# --- the rules, in their order ------------------------------------------------------------


def kill(state: RiskState, limits: RiskLimits) -> Check:
    enabled = limits.trading_enabled

    def check(c: OrderContext) -> Breach:
        if state.killed:
            return "kill_switch", f"trading halted: {state.kill_reason or 'kill switch on'}"
        if not enabled:
            return "kill_switch", "trading disabled: trading_enabled = false in the config"
        return None

    return check


def halt(status: StatusBoard) -> Check:
    def check(c: OrderContext) -> Breach:
        condition = status.halt
        if condition is not None:
            return condition.rule, f"trading halted: {condition.reason}"
        return None

    return check


def denylist(denied: frozenset[str]) -> Check:
    def check(c: OrderContext) -> Breach:
        if c.signal.symbol in denied:
            return "symbol_denylist", f"{c.signal.symbol} is in the denylist"
        return None

    return check


def allowlist(allowed: frozenset[str]) -> Check:
    def check(c: OrderContext) -> Breach:
        if c.signal.symbol not in allowed:
            return "symbol_allowlist", f"{c.signal.symbol} is not in the allowlist"
        return None

    return check


def venue_breaker(breaker: VenueBreaker) -> Check:
    def check(c: OrderContext) -> Breach:
        allowed, why = breaker.allows(c.signal.venue)
        return None if allowed else ("venue_breaker", why)

    return check


def stale_data(state: RiskState) -> Check:
    blocks = state.feeds

    def check(c: OrderContext) -> Breach:
        if not blocks or not c.increases:
            return None
        block = blocks.get(c.market)
        if block is None:
            return None
        symbol, venue = c.signal.symbol, c.signal.venue
        return STALE_DATA, f"entries in {symbol} on {venue} blocked: {describe(block)}"

    return check


def stale_signal(state: RiskState, text: str, lag: int) -> Check:
    """A signal carries the close time of the bar it was computed on; once risk has seen a
    bar of the market closing more than ``lag`` later, the signal's stop and target belong
    to a price that is gone: entries from it are refused, exits pass."""
    times = state.bar_times

    def check(c: OrderContext) -> Breach:
        if not c.increases:
            return None
        latest = times.get(c.market)
        signal = c.signal
        if latest is None or latest - signal.ts <= lag:
            return None
        return (
            "stale_signal",
            f"signal on the {signal.symbol} bar of {iso(signal.ts)}: a bar of {iso(latest)} "
            f"was seen, {(latest - signal.ts) / 1e9:g}s later (max_signal_lag {text})",
        )

    return check


def soft(status: StatusBoard) -> Check:
    def check(c: OrderContext) -> Breach:
        condition = status.soft
        if condition is not None and c.increases:
            return condition.rule, f"safe mode, entries blocked: {condition.reason}"
        return None

    return check


def depegged(status: StatusBoard) -> Check:
    def check(c: OrderContext) -> Breach:
        depegs = status.depegged
        condition = depegs.get(c.quote) if depegs else None
        if condition is not None and c.increases:
            return "depeg_guard", f"entries quoted in {c.quote} halted: {condition.reason}"
        return None

    return check


def funding_side(funding: Funding, state: RiskState) -> Check:
    sides, threshold = state.funding, funding.config.threshold_pct

    def check(c: OrderContext) -> Breach:
        side = sides.get(c.market)
        if side is None or not side.side or not c.increases:
            return None
        if (c.after > 0) == (side.side > 0):
            paying = "long" if side.side > 0 else "short"
            return (
                "funding_guard",
                f"{paying} entries in {c.signal.symbol} blocked: funding "
                f"{100 * side.rate:+.4f}% beyond {threshold:g}%",
            )
        return None

    return check


def strategy_rate(state: RiskState, limit: int) -> Check:
    times = state.strategy_orders

    def check(c: OrderContext) -> Breach:
        strategy = c.signal.strategy
        count = _recent(times.get(strategy), c.now, limit)
        if count:
            return (
                "strategy_rate",
                f"{strategy} sent {count} orders in the last minute (max {limit})",
            )
        return None

    return check


def venue_rate(state: RiskState, limit: int) -> Check:
    times = state.venue_orders

    def check(c: OrderContext) -> Breach:
        venue = c.signal.venue
        count = _recent(times.get(venue), c.now, limit)
        if count:
            return "venue_rate", f"{count} orders to {venue} in the last minute (max {limit})"
        return None

    return check


def min_notional(limit: float) -> Check:
    def check(c: OrderContext) -> Breach:
        if not c.increases:
            return None
        if c.price is None:
            return _no_price(c, "min_order_notional")
        notional = c.qty * c.price
        if notional < limit:
            return "min_order_notional", f"notional {notional:.2f} < minimum {limit:.2f}"
        return None

    return check


def max_notional(limit: float) -> Check:
    def check(c: OrderContext) -> Breach:
        if c.price is None:
            return _no_price(c, "max_order_notional")
        notional = c.qty * c.price
        if notional > limit * TOL:
            return "max_order_notional", f"notional {notional:.2f} > limit {limit:.2f}"
        return None

    return check


def max_position(limit: float) -> Check:
    def check(c: OrderContext) -> Breach:
        if c.increases and abs(c.after) > limit * TOL + EPS:
            return "max_position", f"position {c.after:g} would exceed limit {limit:g}"
        return None

    return check


def symbol_exposure(limit: float) -> Check:
    def check(c: OrderContext) -> Breach:
        if not c.increases:
            return None
        if c.price is None:
            return _no_price(c, "symbol_exposure")
        exposure = abs(c.after) * c.price
        if exposure > limit * TOL:
            return (
                "symbol_exposure",
                f"{c.signal.symbol} exposure {exposure:.2f} would exceed {limit:.2f}",
            )
        return None

    return check


def gross_exposure(book: Book, venue_limit: float | None, total_limit: float | None) -> Check:
    def check(c: OrderContext) -> Breach:
        if not c.increases:
            return None
        if c.price is None:
            return _no_price(c, "total_exposure")
        venue = c.signal.venue
        on_venue, total = book.gross(venue)
        change = (abs(c.after) - abs(c.before)) * c.price
        if venue_limit is not None:
            after = on_venue + change
            if after > venue_limit * TOL:
                return (
                    "venue_exposure",
                    f"{venue} gross exposure {after:.2f} would exceed {venue_limit:.2f}",
                )
        if total_limit is not None:
            after = total + change
            if after > total_limit * TOL:
                return (
                    "total_exposure",
                    f"total gross exposure {after:.2f} would exceed {total_limit:.2f}",
                )
        return None

    return check


def open_positions(book: Book, limit: int) -> Check:
    def check(c: OrderContext) -> Breach:
        if not c.opening:
            return None
        count = len(book.open_markets(c.market))
        if count >= limit:
            return (
                "max_open_positions",
                f"{count} positions open, opening {c.signal.symbol} would exceed {limit}",
            )
        return None

    return check


def correlation(book: Book, correlations: Correlations, config: CorrelationConfig) -> Check:
    net, between = book.net, correlations.between
    window, least, most = config.window, config.min_periods, config.max

    def check(c: OrderContext) -> Breach:
        if not c.opening:
            return None
        direction = 1.0 if c.after > 0 else -1.0
        for other in book.open_markets(c.market):
            corr = between(c.market, other, window, least)
            if corr is None:
                continue
            effective = corr * direction * (1.0 if net[other] > 0 else -1.0)
            if effective > most:
                side = "long" if net[other] > 0 else "short"
                return (
                    "correlation",
                    f"{c.signal.symbol} returns correlate {corr:+.3f} with "
                    f"{other.symbol} (held {side}): {effective:+.3f} > max {most:g}",
                )
        return None

    return check
