"""ib_async's trades, fills and positions as the dicts ccxt's unified API gives, and Keel's
order legs as IB orders: pure conversions, so the gateway reads IB like any ccxt exchange.

Keel's client order id travels in IB's ``orderRef`` and comes back on every open order,
completed order and execution. An order's ``id`` is IB's ``permId`` (the same for every
client session and after the daily restart; the per-session ``orderId`` is kept in
``info`` for cancels). Quantities are IB's: shares, contracts, units of the FX base;
orders, fills and positions all count in them (an ES position of 2 is 2 contracts, as the
order and its fills were), so the positions rows carry ``contractSize`` 1 and the
multiplier in ``info``.

The legs that close one Keel order's position (a bracket's stop and target, ``E1.sl`` and
``E1.tp``) share one OCA group (``oca_group``, ``ocaType`` 2: a member's fill reduces the
others by its quantity, with overfill blocking, and a whole fill cancels them), so IB itself
shrinks or cancels the sibling even while Keel is away, and a partial fill of the target
leaves the stop protecting what is left instead of cancelling it.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from typing import Any

from ib_async import (
    Contract,
    Fill,
    LimitOrder,
    MarketOrder,
    Order,
    Position,
    StopLimitOrder,
    StopOrder,
    Trade,
    TradeLogEntry,
)

from services.venues.ib.contracts import keel_symbol
from services.venues.ib.ib_errors import NOT_ENDING, REFUSED_NEW, refusal
from services.venues.ib.specs import ContractSpec

STATUS = {
    "Filled": "closed",
    "Cancelled": "canceled",
    "ApiCancelled": "canceled",
    "Inactive": "rejected",
}
"""IB's order states that end an order; every other (PendingSubmit, PreSubmitted,
Submitted, PendingCancel, ApiPending, ValidationError) leaves it open."""
UNSET = 1.7976931348623157e308
_IB_PREFIX = re.compile(r"^(?:Error|Warning) -?\d+, reqId -?\d+: ")
_LEG_SUFFIX = re.compile(r"\.(?:tp|sl)\d*$")
OCA_REDUCE_WITH_BLOCK = 2
"""IB's ``ocaType`` 2: a member's fill reduces the others by its quantity (a whole fill
cancels them), with overfill blocking. Type 1 would cancel the stop on the target's first
partial fill and leave the rest of the position unprotected until Keel placed it again."""


def oca_group(client_order_id: str) -> str:
    """The OCA group of a closing leg: one name for every leg of one Keel bracket (its
    target and stop, and a stop placed again: ``E1.tp``, ``E1.sl``, ``E1.sl2`` are ``E1``'s),
    derived from the bracket's id alone (24 characters), so a restarted gateway names it the
    same."""
    group = _LEG_SUFFIX.sub("", client_order_id)
    return "keel-" + hashlib.sha256(group.encode()).hexdigest()[:19]


def ib_order(
    side: str,
    kind: str,
    amount: float,
    price: float | None,
    trigger: float | None,
    tif: str,
    client_id: str,
    account: str,
    oca: str = "",
) -> Order:
    """A ccxt-shaped request as an IB order: ``market``/``limit``, a stop when
    ``triggerPrice`` is given (STP, STP LMT); in the OCA group ``oca`` when one is named."""
    action = "BUY" if side == "buy" else "SELL"
    if trigger is not None and kind == "limit" and price is not None:
        order: Order = StopLimitOrder(action, amount, price, trigger)
    elif trigger is not None:
        order = StopOrder(action, amount, trigger)
    elif kind == "limit" and price is not None:
        order = LimitOrder(action, amount, price)
    else:
        order = MarketOrder(action, amount)
    order.tif = tif
    order.orderRef = client_id
    order.account = account
    if oca:
        order.ocaGroup = oca
        order.ocaType = OCA_REDUCE_WITH_BLOCK
    return order


def modified(
    order: Order, amount: float | None, price: float | None, trigger: float | None
) -> Order:
    """``order`` (a copy: ib_async's own stays as IB last confirmed it) with a new quantity,
    limit and trigger; the rest (its ids, type, OCA group) unchanged, as IB wants a modify."""
    changed = copy.copy(order)
    if amount is not None:
        changed.totalQuantity = float(amount)
    if price is not None and order.orderType in ("LMT", "STP LMT"):
        changed.lmtPrice = float(price)
    if trigger is not None and order.orderType in ("STP", "STP LMT"):
        changed.auxPrice = float(trigger)
    return changed


def carries(have: Order, wanted: Order) -> bool:
    """Whether IB's view of an order (``openOrder``) has the values a modify asked for."""
    kind = wanted.orderType
    return (
        float(have.totalQuantity) == float(wanted.totalQuantity)
        and (kind not in ("LMT", "STP LMT") or float(have.lmtPrice) == float(wanted.lmtPrice))
        and (kind not in ("STP", "STP LMT") or float(have.auxPrice) == float(wanted.auxPrice))
    )


def _ms(when: dt.datetime | None) -> int | None:
    if when is None or when.year < 1971:
        return None
    return int(when.timestamp() * 1000)


def _set(value: float) -> float | None:
    return None if value in (UNSET, 0.0) else float(value)


def rejection(trade: Trade) -> tuple[int, str]:
    """IB's error code and own text when the order's last news was an error (without the
    ``Error 201, reqId 5:`` ib_async puts in front); 0 when it was not."""
    last = trade.log[-1] if trade.log else None
    if last is None or not last.errorCode:
        return 0, ""
    return rejection_of(last)


def rejection_of(entry: TradeLogEntry) -> tuple[int, str]:
    """One error of IB's about an order: its code and IB's own text."""
    return entry.errorCode, _IB_PREFIX.sub("", entry.message, count=1)


def order_dict(trade: Trade, specs: Sequence[ContractSpec]) -> dict[str, Any]:
    order, status = trade.order, trade.orderStatus
    ib_status = status.status
    code, text = rejection(trade)
    state = STATUS.get(ib_status, "open")
    filled = status.filled or (order.filledQuantity if order.filledQuantity != UNSET else 0.0)
    amount = float(order.totalQuantity)
    if state == "canceled" and code in NOT_ENDING:
        # ib_async marks an order Cancelled on any error about it, but a refused cancel or
        # modification (10147, 10148, 161, 104) leaves the order as it was
        state = "closed" if filled >= amount else "open"
    elif state == "canceled" and code and not status.filled and code != 202:
        state = "rejected"  # ib_async marks an order IB refused (201, 110...) Cancelled
    elif ib_status == "ValidationError" and code in REFUSED_NEW and not order.permId:
        state = "rejected"  # a warning to ib_async (a modify stays live); a new order is not
    stop = order.orderType in ("STP", "STP LMT")
    times = [_ms(entry.time) for entry in trade.log]
    stamps = [t for t in times if t is not None]
    return {
        "id": str(order.permId or status.permId or ""),
        "clientOrderId": order.orderRef or None,
        "symbol": keel_symbol(trade.contract, specs),
        "type": "limit" if order.orderType in ("LMT", "STP LMT") else "market",
        "side": "buy" if order.action == "BUY" else "sell",
        "amount": amount,
        "filled": float(filled),
        "remaining": max(0.0, amount - float(filled)),
        "average": _set(status.avgFillPrice),
        "price": _set(order.lmtPrice) if order.orderType in ("LMT", "STP LMT") else None,
        "triggerPrice": _set(order.auxPrice) if stop else None,
        "stopPrice": _set(order.auxPrice) if stop else None,
        "timeInForce": order.tif,
        "reduceOnly": False,
        "status": state,
        "timestamp": stamps[0] if stamps else None,
        "lastUpdateTimestamp": stamps[-1] if stamps else None,
        "trades": [],
        "info": {
            "orderId": order.orderId,
            "permId": order.permId or status.permId,
            "clientId": order.clientId,
            "status": ib_status,
            "account": order.account,
            "reason": refusal(code, text) if state == "rejected" and code else "",
        },
    }


def has_report(fill: Fill) -> bool:
    return bool(fill.commissionReport.execId) and (
        fill.commissionReport.execId == fill.execution.execId
    )


def trade_dict(fill: Fill, specs: Sequence[ContractSpec]) -> dict[str, Any]:
    """One execution as a ccxt trade; its fee is the commission report's (the caller hands
    only fills whose report has come)."""
    ex, report = fill.execution, fill.commissionReport
    multiplier = float(fill.contract.multiplier or 1.0)
    liquidity = {1: "maker", 2: "taker"}.get(ex.lastLiquidity)
    return {
        "id": ex.execId,
        "order": str(ex.permId) if ex.permId else None,
        "clientOrderId": ex.orderRef or None,
        "symbol": keel_symbol(fill.contract, specs),
        "side": "buy" if ex.side == "BOT" else "sell",
        "amount": float(ex.shares),
        "price": float(ex.price),
        "cost": float(ex.shares) * float(ex.price) * multiplier,
        "fee": {"cost": float(report.commission), "currency": report.currency},
        "timestamp": _ms(ex.time),
        "takerOrMaker": liquidity,
        "type": None,
        "info": {
            "orderId": ex.orderId,
            "clientId": ex.clientId,
            "exchange": ex.exchange,
            "account": ex.acctNumber,
            "realizedPNL": report.realizedPNL,
        },
    }


def position_dict(position: Position, specs: Sequence[ContractSpec]) -> dict[str, Any] | None:
    """A signed IB position as a ccxt position row; None for a contract no spec names."""
    symbol = keel_symbol(position.contract, specs)
    if symbol is None or not position.position:
        return None
    contract: Contract = position.contract
    return {
        "symbol": symbol,
        "contracts": abs(float(position.position)),
        "contractSize": 1.0,
        "side": "long" if position.position > 0 else "short",
        "entryPrice": float(position.avgCost) / float(contract.multiplier or 1.0),
        "info": {
            "account": position.account,
            "conId": contract.conId,
            "multiplier": contract.multiplier or "1",
            "position": float(position.position),
        },
    }
