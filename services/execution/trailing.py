"""Trailing stops: a stop that follows the best price since it became active, moved after
each bar's fills and never loosened.

Pure: these functions compute where a stop goes; the order manager amends the venue leg.
"""

from __future__ import annotations

from collections.abc import Iterator

from contracts.events import Bar, OrderCommand
from services.execution.order_state import OmsState, Order, Trail, number_text
from services.execution.orders import WORKING


def new_trail(cmd: OrderCommand) -> Trail | None:
    """The trail a new order asks for (``trail_pct``, else ``trail_atr``), or None."""
    if cmd.trail_pct:
        return Trail(sell=cmd.side == "sell", pct=cmd.trail_pct)
    if cmd.trail_atr:
        return Trail(sell=cmd.side == "sell", mult=cmd.trail_atr, atr=cmd.atr or 0.0)
    return None


def trail_stop(trail: Trail, market_atr: float | None) -> float | None:
    """The stop the trail asks for now (None: no best price, or no ATR yet)."""
    if not trail.best:
        return None
    if trail.pct:
        distance = trail.best * trail.pct / 100.0
    else:
        atr = trail.atr or market_atr
        if atr is None:
            return None
        distance = trail.mult * atr
    return trail.best - distance if trail.sell else trail.best + distance


def trailed_stops(
    state: OmsState, bar: Bar, market_atr: float | None
) -> Iterator[tuple[Order, str]]:
    """The trailing stops of the bar's market that move on it, each with the reason of its
    amendment (its new ``stop_price`` already set). Lazy: each one is amended before the
    next is looked at."""
    orders = state.orders
    trailing = state.trailing
    for oid in list(trailing):
        rec = orders.get(oid)
        if rec is None or rec.status not in WORKING:
            trailing.remove(oid)
            continue
        cmd = rec.cmd
        if cmd.symbol != bar.symbol or cmd.venue != bar.venue or rec.cum_qty > 0:
            continue
        group = state.groups.get(rec.group) if rec.kind == "stop_loss" else None
        trail = group.trail if group is not None else rec.trail
        if trail is None or bar.open_time < trail.since or rec.stop_price is None:
            continue
        if trail.sell:
            trail.best = bar.high if not trail.best else max(trail.best, bar.high)
        else:
            trail.best = bar.low if not trail.best else min(trail.best, bar.low)
        stop = trail_stop(trail, market_atr)
        old = rec.stop_price
        if stop is None or not (stop > old if trail.sell else stop < old):
            continue
        rec.stop_price = stop
        if group is not None:
            group.stop_loss = stop
        best = number_text(trail.best)
        yield rec, f"amended: trailing stop {number_text(old)} -> {number_text(stop)} (best {best})"
