"""ccxt's order and trade dicts as ``VenueAnswer`` events: pure conversions, no I/O.

Quantities, prices and fees come from the exchange's answer (ccxt already parsed them to the
exchange's precision), never from the request. A fill's ``trade_id`` is the venue's own, so
the same trade seen on the private stream, by polling or by reconciliation is one event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from contracts.venue_events import AnswerKind, AnswerSource, VenueAnswer, VenueOrder

ORDER_STATUS: dict[str, AnswerKind] = {
    "open": "accepted",
    "closed": "accepted",  # fully filled: its fills are separate answers
    "canceled": "canceled",
    "cancelled": "canceled",
    "expired": "expired",
    "rejected": "rejected",
}
MS_NS = 1_000_000


def _num(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if number == number and abs(number) != float("inf") else 0.0


def _ms(value: Any) -> int:
    number = _num(value)
    return int(number) * MS_NS if number > 0 else 0


def base_answer(
    leg: VenueOrder, kind: AnswerKind, source: AnswerSource, ts: int, **fields: Any
) -> VenueAnswer:
    """An answer about ``leg`` with Keel's side of the facts filled in."""
    return VenueAnswer(
        ts=ts,
        kind=kind,
        venue=leg.venue,
        symbol=leg.symbol,
        client_order_id=leg.client_order_id,
        venue_client_id=leg.venue_client_id,
        source=source,
        strategy=leg.strategy,
        side=leg.side,
        order_qty=fields.pop("order_qty", leg.qty),
        **fields,
    )


def order_answer(
    order: Mapping[str, Any], leg: VenueOrder, source: AnswerSource, ts: int
) -> VenueAnswer:
    """The state ccxt reports for ``leg``'s order: accepted (open or filled), canceled,
    expired or rejected, with the exchange's filled quantity and order id. An order ccxt
    gives no status for (an acknowledgement with the id only) is accepted."""
    status = str(order.get("status") or "open").lower()
    kind = ORDER_STATUS.get(status, "accepted")
    info = order.get("info")
    reason = ""
    if kind == "rejected" and isinstance(info, Mapping):
        reason = str(info.get("rejectReason") or info.get("reason") or "rejected by the venue")
    return base_answer(
        leg,
        kind,
        source,
        ts,
        venue_order_id=str(order.get("id") or ""),
        order_qty=_num(order.get("amount")) or leg.qty,  # the exchange's, to its lot
        cum_qty=_num(order.get("filled")),
        venue_ts=_ms(order.get("lastUpdateTimestamp") or order.get("timestamp")),
        reason=reason,
    )


def trade_answer(
    trade: Mapping[str, Any], leg: VenueOrder, source: AnswerSource, ts: int
) -> VenueAnswer | None:
    """One venue trade of ``leg`` as a fill; None when ccxt's dict lacks an id, a quantity or
    a price (nothing is guessed: a later poll or reconciliation sees it complete)."""
    trade_id = str(trade.get("id") or "")
    qty, price = _num(trade.get("amount")), _num(trade.get("price"))
    if not trade_id or qty <= 0 or price <= 0:
        return None
    fee = trade.get("fee")
    fee_cost, fee_currency = 0.0, ""
    if isinstance(fee, Mapping):
        fee_cost, fee_currency = _num(fee.get("cost")), str(fee.get("currency") or "")
    return base_answer(
        leg,
        "fill",
        source,
        ts,
        venue_order_id=str(trade.get("order") or ""),
        trade_id=trade_id,
        fill_qty=qty,
        fill_price=price,
        fee=fee_cost,
        fee_currency=fee_currency,
        venue_ts=_ms(trade.get("timestamp")),
    )


def client_id_of(item: Mapping[str, Any]) -> str:
    """The client order id ccxt parsed from an order or trade ('' when it has none)."""
    found = item.get("clientOrderId")
    if found:
        return str(found)
    info = item.get("info")
    if isinstance(info, Mapping):
        for key in ("clientOrderId", "c", "clientAlgoId", "orderLinkId", "cl_ord_id", "cliOrdId"):
            if info.get(key):
                return str(info[key])
    return ""


def order_ids(order: Mapping[str, Any]) -> list[str]:
    """The exchange ids an order goes by: its own, and for a triggered conditional order
    the order it became (Binance USDT-M's algo order: ``actualOrderId``/``ai``), whose
    trades name that one."""
    ids = [str(order["id"])] if order.get("id") else []
    info = order.get("info")
    if isinstance(info, Mapping):
        actual = info.get("actualOrderId") or info.get("ai")
        if actual:
            ids.append(str(actual))
    return ids
