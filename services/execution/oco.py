"""One-cancels-other groups filled on the same bar: a bar does not say which member traded
first, so this decides it. Pure: it names the void fills and the legs to cancel; the order
manager acts on them."""

from __future__ import annotations

from collections.abc import Sequence

from contracts.events import Bar, Event, ExecutionReport
from services.execution.order_state import OcoGroupId, Order


def same_bar_oco_fills(
    orders: dict[str, Order], reports: Sequence[Event], bar: Bar
) -> tuple[set[int], list[Order]]:
    """Members of one OCO group (explicit, or a bracket's two legs) that all filled on this
    bar: the one the bar opened through traded first; otherwise a stop (the worse case for
    the position); otherwise the first. Returns the ``id()`` of the other members' fill
    reports, which are void, and the other members whose venue legs are still live."""
    fills: dict[OcoGroupId | str, list[tuple[Order, ExecutionReport]]] = {}
    for r in reports:
        if not isinstance(r, ExecutionReport) or not r.fill_qty:
            continue
        rec = orders.get(r.client_order_id)
        if rec is None:
            continue
        oco = rec.oco or (rec.group if rec.kind != "order" else "")
        if oco:
            fills.setdefault(oco, []).append((rec, r))
    void: set[int] = set()
    losers: list[Order] = []
    for items in fills.values():
        members: list[Order] = []
        for rec, _ in items:
            if not any(rec is m for m in members):
                members.append(rec)
        if len(members) < 2:
            continue
        gapped = [m for m in members if _gapped(m, bar)]
        if len(gapped) == 1:
            winner = gapped[0]
        else:
            pool = gapped or members
            stops = [m for m in pool if m.cmd.order_type in ("stop", "stop_limit")]
            winner = (stops or pool)[0]
        for rec, r in items:
            if rec is winner:
                continue
            void.add(id(r))
            if r.status == "filled":
                rec.leg_live = False
        losers.extend(rec for rec in members if rec is not winner and rec.leg_live)
    return void, losers


def _gapped(rec: Order, bar: Bar) -> bool:
    """Whether the bar opened through the order's price (it traded at the open)."""
    buy = rec.cmd.side == "buy"
    kind = rec.cmd.order_type
    if kind == "limit" and rec.limit_price is not None:
        return bar.open <= rec.limit_price if buy else bar.open >= rec.limit_price
    if kind in ("stop", "stop_limit") and rec.stop_price is not None:
        return bar.open >= rec.stop_price if buy else bar.open <= rec.stop_price
    return kind == "market"
