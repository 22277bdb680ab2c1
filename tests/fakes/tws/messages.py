"""Outgoing TWS messages, field by field in the order ib_async's decoder reads them.

Each function returns one message's fields (message id first); ``wire.frame`` encodes them.
Layouts are those of the server version the fake announces (``SERVER_VERSION``, 178): no
version field where IB dropped it, no ``faProfile`` (gone at 177), ``pendingPriceRevision``
on executions (178). Unset values are empty fields, as TWS sends them.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from tests.fakes.tws.contracts import Listing, hours
from tests.fakes.tws.market import NS, TWS_ZONE, BarRow
from tests.fakes.tws.orders import Execution, Position, Working
from tests.fakes.tws.wire import UNSET_DOUBLE, Field

SERVER_VERSION = 178
Fields = list[Field]

# incoming message ids
START_API, CURRENT_TIME, CONTRACT_DETAILS, HISTORICAL, CANCEL_HISTORICAL = 71, 49, 9, 20, 25
REALTIME, CANCEL_REALTIME, PLACE, CANCEL, OPEN_ORDERS, ALL_OPEN_ORDERS = 50, 51, 3, 4, 5, 16
AUTO_OPEN_ORDERS, COMPLETED, EXECUTIONS, IDS, ACCOUNT_UPDATES, ACCOUNT_MULTI = 15, 99, 7, 8, 6, 76
CANCEL_ACCOUNT_MULTI, POSITIONS, CANCEL_POSITIONS, MANAGED, GLOBAL_CANCEL = 77, 61, 64, 17, 58
MARKET_DATA_TYPE, ACCOUNT_SUMMARY, CANCEL_ACCOUNT_SUMMARY = 59, 62, 63


def tws_time(ns: int) -> str:
    """An execution or account time as TWS writes it, in its own zone."""
    local = dt.datetime.fromtimestamp(ns / NS, ZoneInfo(TWS_ZONE))
    return f"{local:%Y%m%d %H:%M:%S} {TWS_ZONE}"


def hello_time(ns: int) -> str:
    """The connection time of the handshake answer (``20240305 10:00:00 EST``)."""
    local = dt.datetime.fromtimestamp(ns / NS, ZoneInfo(TWS_ZONE))
    return f"{local:%Y%m%d %H:%M:%S} {local.tzname()}"


def contract(x: Listing) -> Fields:
    return [
        x.conId, x.symbol, x.secType, x.lastTradeDate, 0.0, "", x.multiplier, x.exchange,
        x.currency, x.localSymbol, x.tradingClass,
    ]  # fmt: skip


def error(req_id: int, code: int, text: str) -> Fields:
    return [4, 2, req_id, code, text, ""]


def next_valid_id(order_id: int) -> Fields:
    return [9, 1, order_id]


def managed_accounts(account: str) -> Fields:
    return [15, 1, account]


def current_time(ns: int) -> Fields:
    return [49, 1, ns // NS]


def contract_details(req_id: int, x: Listing, now_ns: int) -> Fields:
    last = f"{x.lastTradeDate} {x.lastTradeTime} {x.timeZoneId}" if x.lastTradeDate else ""
    sec_ids: Fields = [len(x.secIds)]
    for tag, value in x.secIds:
        sec_ids += [tag, value]
    return [
        10, req_id, x.symbol, x.secType, last, 0.0, "", x.exchange, x.currency, x.localSymbol,
        x.marketName, x.tradingClass, x.conId, x.minTick,
        x.multiplier, x.orderTypes, x.validExchanges, 1, x.underConId, x.longName,
        x.primaryExchange, x.contractMonth, x.industry, x.category, x.subcategory,
        x.timeZoneId, hours(x, now_ns, rth=False), hours(x, now_ns, rth=True), "", "",
        *sec_ids,
        1, x.underSymbol, x.underSecType, x.marketRuleIds, x.lastTradeDate, x.stockType,
        x.minSize, x.sizeIncrement, x.suggestedSizeIncrement,
    ]  # fmt: skip


def contract_details_end(req_id: int) -> Fields:
    return [52, 1, req_id]


def _price(value: float | None) -> float:
    return UNSET_DOUBLE if value is None else value


def open_order(o: Working) -> Fields:
    t, x = o.ticket, o.listing
    head: Fields = [
        5, t.order_id, *contract(x),
        t.action, t.quantity, t.order_type, _price(t.lmt_price), _price(t.aux_price), t.tif,
        t.oca_group, t.account, "O", 0, t.order_ref, t.client_id, o.perm_id, t.outside_rth,
        False, 0.0, "", "", "", "", "",
    ]  # fmt: skip
    terms: Fields = [
        "", "", "", "", "", 0, "", "", 0, "", "", "", "", "", 0, False, False, False, "",
        t.oca_type, False, False, "", t.parent_id, 0, "", "", "", "",
    ]  # fmt: skip
    state: Fields = [False, False, o.status, *[""] * 9, "", "", "", "", "", False, False]
    tail: Fields = [
        "", "", "", "", "", "", "", 0, "", "", "", "", False, False, "", False,
        "", "", False,
        "", "", "", "", "",
    ]  # fmt: skip
    legs: Fields = [False, "", "", "", "", "", "", 0, 0, 0, "", "", "", ""]
    return [*head, *terms, *legs, False, "", "", False, 0, "", *state, 0, *tail]


def order_status(o: Working) -> Fields:
    t = o.ticket
    status = "Submitted" if o.status == "PendingSubmit" else o.status
    return [
        3, t.order_id, status, o.filled, o.remaining, o.avg_price, o.perm_id, t.parent_id,
        o.last_price, t.client_id, "", 0.0,
    ]  # fmt: skip


def open_order_end() -> Fields:
    return [53, 1]


def completed_order(o: Working) -> Fields:
    t, x = o.ticket, o.listing
    head: Fields = [
        101, *contract(x),
        t.action, t.quantity, t.order_type, _price(t.lmt_price), _price(t.aux_price), t.tif,
        t.oca_group, t.account, "O", 0, t.order_ref, o.perm_id, t.outside_rth, False, 0.0, "",
        "", "", "",
    ]  # fmt: skip
    terms: Fields = [
        "", "", "", "", "", 0, "", "", "", "", "", "", "", 0, False, False, "", t.oca_type, 0,
        "", "", "", "",
    ]  # fmt: skip
    legs: Fields = [False, "", "", "", "", 0, 0, 0, "", "", "", ""]
    tail: Fields = [
        "", "", "", False, False, "", o.filled, 0, False, "", False, False, 0,
        tws_time(o.done_ns), o.done_text,
        "", "", "", "", "",
    ]  # fmt: skip
    return [*head, *terms, *legs, "", "", False, 0, "", False, o.status, False, False, 0, *tail]


def completed_orders_end() -> Fields:
    return [102]


def exec_details(req_id: int, e: Execution, x: Listing) -> Fields:
    return [
        11, req_id, e.order_id, *contract(x), e.exec_id, tws_time(e.time_ns), e.account,
        e.exchange, e.side, e.shares, e.price, e.perm_id, e.client_id, 0, e.cum_qty,
        e.avg_price, e.order_ref, "", "", "", e.liquidity, False,
    ]  # fmt: skip


def exec_details_end(req_id: int) -> Fields:
    return [55, 1, req_id]


def commission_report(e: Execution) -> Fields:
    realized = UNSET_DOUBLE if e.realized_pnl is None else e.realized_pnl
    return [59, 1, e.exec_id, e.commission, e.currency, repr_unset(realized), "", ""]


def repr_unset(value: float) -> str:
    """TWS writes an unset P&L as the largest double, in Java's notation."""
    return "1.7976931348623157E308" if value == UNSET_DOUBLE else repr(round(value, 2))


def position(account: str, p: Position) -> Fields:
    """A stock's position names its primary exchange, as TWS reports it."""
    x = p.listing
    fields = contract(x)
    if x.secType == "STK":
        fields[7] = x.primaryExchange
    return [61, 3, account, *fields, p.qty, round(p.avg_cost, 6)]


def position_end() -> Fields:
    return [62, 1]


def portfolio(account: str, p: Position, price: float) -> Fields:
    x = p.listing
    value = price * p.qty * x.factor
    unrealized = value - p.avg_cost * p.qty
    return [
        7, 8, x.conId, x.symbol, x.secType, x.lastTradeDate, 0.0, "", x.multiplier,
        x.primaryExchange, x.currency, x.localSymbol, x.tradingClass, p.qty, price,
        round(value, 2), round(p.avg_cost, 6), round(unrealized, 2), round(p.realized, 2), account,
    ]  # fmt: skip


def account_value(key: str, value: str, currency: str, account: str) -> Fields:
    return [6, 2, key, value, currency, account]


def account_time(ns: int) -> Fields:
    local = dt.datetime.fromtimestamp(ns / NS, ZoneInfo(TWS_ZONE))
    return [8, 1, f"{local:%H:%M}"]


def account_download_end(account: str) -> Fields:
    return [54, 1, account]


def account_update_multi(req_id: int, account: str, key: str, value: str, currency: str) -> Fields:
    return [73, 1, req_id, account, "", key, value, currency]


def account_update_multi_end(req_id: int) -> Fields:
    return [74, 1, req_id]


def account_summary(req_id: int, account: str, key: str, value: str, currency: str) -> Fields:
    return [63, 1, req_id, account, key, value, currency]


def account_summary_end(req_id: int) -> Fields:
    return [64, 1, req_id]


def _bar(date: str, r: BarRow) -> Fields:
    return [date, r.open, r.high, r.low, r.close, r.volume, r.wap, r.count]


def historical_data(req_id: int, start: str, end: str, rows: list[tuple[str, BarRow]]) -> Fields:
    fields: Fields = [17, req_id, start, end, len(rows)]
    for date, row in rows:
        fields += _bar(date, row)
    return fields


def historical_update(req_id: int, date: str, r: BarRow) -> Fields:
    return [90, req_id, r.count, date, r.open, r.close, r.high, r.low, r.wap, r.volume]


def realtime_bar(req_id: int, r: BarRow) -> Fields:
    return [
        50,
        3,
        req_id,
        r.open_ns // NS,
        r.open,
        r.high,
        r.low,
        r.close,
        r.volume,
        r.wap,
        r.count,
    ]
