"""Protective stops the order manager places on its own: the stop validator, which puts a
stop on every position of a strategy listed in ``[orders] require_stop`` that lacks one,
and the tightening of working stops on risk's ``tighten_stops`` alert.

Pure: these functions decide which groups protect what and where stops go; the order
manager places and amends the venue legs.
"""

from __future__ import annotations

from collections.abc import Iterator

from contracts.events import Bar, RiskAlert
from contracts.keys import BookId, InstrumentId
from contracts.subjects import symbol_token
from services.execution.order_state import DUST, Group, OmsState, Order, number_text
from services.execution.orders import WORKING
from services.execution.orders_config import OrdersConfig


def rule_stop(
    config: OrdersConfig, long: bool, price: float, market_atr: float | None
) -> float | None:
    """The validator's stop for a position entered at ``price`` (None: no ATR yet)."""
    if price <= 0:
        return None
    if config.stop_pct is not None:
        distance = price * config.stop_pct / 100.0
    else:
        if market_atr is None or config.stop_atr is None:
            return None
        distance = config.stop_atr * market_atr
    stop = price - distance if long else price + distance
    return stop if stop > 0 else None


def validate(
    state: OmsState,
    config: OrdersConfig,
    bar: Bar,
    market: InstrumentId,
    market_atr: float | None,
    touched: dict[BookId, None],
) -> None:
    """Give every position of the bar's market that must carry a stop one for all of it:
    a group without a working stop gets its stop back (at the rule's price when it had
    none), and what no group covers joins the position's protect group. The books whose
    legs must follow are marked in ``touched``."""
    groups_by_id = state.groups
    for book, pos in state.positions.items():
        if book.instrument != market or not pos.qty:
            continue
        if not config.requires_stop(book.strategy):
            continue
        long = pos.qty > 0
        groups = [g for g in groups_by_id.values() if g.long == long and g.book == book]
        for group in groups:
            if group.open <= 0 or _working(state, group.sl_id):
                continue
            if not group.stop_loss:
                stop = rule_stop(config, long, group.avg, market_atr)
                if stop is None:
                    continue
                group.stop_loss = stop
            group.sl_off = False
            touched[book] = None
        size = abs(pos.qty)
        uncovered = size - sum(g.open for g in groups)
        if uncovered <= DUST * size:
            continue
        protect = next((g for g in groups if g.protect), None)
        if protect is None:
            stop = rule_stop(config, long, pos.avg, market_atr)
            if stop is None:
                continue
            gid = f"{book.strategy}-{symbol_token(book.symbol)}-protect-{bar.close_time}"
            protect = groups_by_id[gid] = Group(gid, book, long, protect=True, stop_loss=stop)
        protect.open += uncovered
        protect.cost += uncovered * pos.avg
        touched[book] = None


def tightened_stops(
    state: OmsState, alert: RiskAlert, fraction: float
) -> Iterator[tuple[Order, str]]:
    """A soft breach: every working protective stop (of the alert's market, or all) moves
    ``fraction`` of the way to its market's last close; never loosened, never past it.
    Yields each moved stop (new ``stop_price`` set) with the reason of its amendment; lazy,
    so each one is amended before the next is looked at."""
    for rec in list(state.orders.values()):
        cmd = rec.cmd
        if rec.kind != "stop_loss" or rec.status not in WORKING or rec.cum_qty > 0:
            continue
        if alert.symbol and (cmd.symbol != alert.symbol or cmd.venue != alert.venue):
            continue
        close = state.closes.get(rec.book.instrument)
        old = rec.stop_price
        if close is None or old is None:
            continue
        stop = old + fraction * (close - old)
        if not (stop > old if cmd.side == "sell" else stop < old):
            continue
        rec.stop_price = stop
        group = state.groups.get(rec.group)
        if group is not None:
            group.stop_loss = stop
        old_text, stop_text = number_text(old), number_text(stop)
        yield rec, f"amended: stop tightened {old_text} -> {stop_text} ({alert.rule})"


def _working(state: OmsState, oid: str) -> bool:
    rec = state.orders.get(oid) if oid else None
    return rec is not None and rec.status in WORKING
