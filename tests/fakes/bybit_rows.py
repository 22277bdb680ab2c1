"""Bybit v5's private records, built from the neutral engine's orders, fills and balances.

One shape serves REST (``/v5/order/realtime|history``, ``/v5/execution/list``,
``/v5/position/list``, ``/v5/account/wallet-balance``) and the private websocket (the same
rows plus ``category``), field by field as the recorded responses in ccxt's static fixtures
have them. Spot and linear rows differ the way Bybit's do: spot order ids are 19-digit
numbers and linear ones UUIDs; linear rows carry ``tpslMode``/``createType`` (ccxt tells a
contract row from a spot one by them), spot rows ``marketUnit`` and "0" for empty prices.
"""

from __future__ import annotations

from typing import Any

import msgspec

from tests.fakes.matching import Balance, FakeFill, FakeOrder, PerpPosition
from tests.fakes.prices import NS, SymbolSpec, decimals

MS = 1_000_000
SPOT, LINEAR = "spot", "linear"
SPOT_ORDER_BASE = 1_600_000_000_000_000_000
SPOT_EXEC_BASE = 2_100_000_000_000_000_000
LINEAR_ORDER_PREFIX = "5ab5f1c6-0b2e-4e7a-9d3f-"
LINEAR_EXEC_PREFIX = "8c1e7d42-6a0f-5b3e-a1c4-"
TIF_OUT = {"GTC": "GTC", "IOC": "IOC", "FOK": "FOK", "GTX": "PostOnly"}
OPEN_STATUS = {"new": "New", "partially_filled": "PartiallyFilled", "filled": "Filled"}


class Extra(msgspec.Struct):
    """What a Bybit order carries that the neutral engine has no field for."""

    category: str
    order_filter: str = "Order"
    """``Order``, ``StopOrder`` or ``tpslOrder`` (spot's three books)."""
    market_unit: str = ""
    quote_qty: str = ""
    """The qty as sent for a spot market order in ``quoteCoin``."""
    trigger_direction: int = 0
    order_type: str = ""
    """``Market``/``Limit`` as placed (a conditional order's own type)."""
    last_on_created: str = ""
    cancel_type: str = "UNKNOWN"


def category_of(spec: SymbolSpec) -> str:
    return SPOT if spec.kind == "spot" else LINEAR


def order_id_text(category: str, order_id: int) -> str:
    if category == SPOT:
        return str(SPOT_ORDER_BASE + order_id)
    return f"{LINEAR_ORDER_PREFIX}{order_id:012x}"


def exec_id_text(category: str, trade_id: int) -> str:
    if category == SPOT:
        return str(SPOT_EXEC_BASE + trade_id)
    return f"{LINEAR_EXEC_PREFIX}{trade_id:012x}"


def parse_order_id(category: str, value: str) -> int:
    """The engine's id behind a Bybit order id, or -1 for one this exchange never issued."""
    try:
        if category == SPOT:
            found = int(value) - SPOT_ORDER_BASE
        elif value.startswith(LINEAR_ORDER_PREFIX):
            found = int(value[len(LINEAR_ORDER_PREFIX) :], 16)
        else:
            return -1
    except ValueError:
        return -1
    return found if found >= 0 else -1


def number(value: float, digits: int = 8) -> str:
    """A decimal without trailing zeros, as Bybit writes amounts and fees."""
    out = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if out in ("", "-0") else out


def price_text(value: float, spec: SymbolSpec) -> str:
    return f"{value:.{decimals(spec.tick_size)}f}"


def qty_text(value: float, spec: SymbolSpec) -> str:
    return f"{value:.{decimals(spec.lot_size)}f}"


def default_extra(spec: SymbolSpec, order: FakeOrder) -> Extra:
    """For an order placed behind the skin's back (``faults.external``)."""
    conditional = order.stop_price is not None
    return Extra(
        category=category_of(spec),
        order_filter="StopOrder" if conditional and spec.kind == "spot" else "Order",
        market_unit="baseCoin" if spec.kind == "spot" and order.price is None else "",
        order_type="Limit" if order.price is not None else "Market",
    )


def order_status(order: FakeOrder, spot: bool) -> str:
    untriggered = order.stop_price is not None and not order.triggered
    if order.status in OPEN_STATUS:
        return "Untriggered" if untriggered and order.status == "new" else OPEN_STATUS[order.status]
    if order.status == "rejected":
        return "Rejected"
    if untriggered:
        return "Deactivated"
    if spot and order.filled > 0:
        return "PartiallyFilledCanceled"
    return "Cancelled"


def order_row(spec: SymbolSpec, order: FakeOrder, extra: Extra, ws: bool = False) -> dict[str, Any]:
    spot = extra.category == SPOT
    empty = "0" if spot else ""
    conditional = order.stop_price is not None
    is_open = order.is_open
    leaves = order.qty - order.filled if is_open else 0.0
    limit = order.price if order.price is not None else 0.0
    fee = number(order.fee_paid)
    qty = extra.quote_qty or qty_text(order.qty, spec)
    row: dict[str, Any] = {}
    if ws:
        row["category"] = extra.category
    row.update(
        {
            "symbol": spec.base + spec.quote,
            "orderType": extra.order_type or ("Limit" if order.price is not None else "Market"),
            "orderLinkId": order.client_id,
            "slLimitPrice": "0",
            "orderId": order_id_text(extra.category, order.order_id),
            "cancelType": extra.cancel_type if order.status == "canceled" else "UNKNOWN",
            "avgPrice": price_text(order.avg_price, spec) if order.filled else empty,
            "stopOrderType": "Stop" if conditional else "",
            "lastPriceOnCreated": extra.last_on_created,
            "orderStatus": order_status(order, spot),
            "takeProfit": empty,
            "cumExecValue": number(order.filled * order.avg_price),
            "smpType": "None",
            "triggerDirection": extra.trigger_direction,
            "blockTradeId": "",
            "isLeverage": "0" if spot else "",
            "rejectReason": "EC_NoError",
            "price": price_text(limit, spec) if order.price is not None else "0",
            "orderIv": "",
            "createdTime": str(order.created_ns // MS),
            "tpTriggerBy": "",
            "positionIdx": 0,
            "timeInForce": "IOC" if order.price is None else TIF_OUT[order.tif],
            "leavesValue": number(leaves * limit),
            "updatedTime": str(order.updated_ns // MS),
            "side": "Buy" if order.side == "buy" else "Sell",
            "smpGroup": 0,
            "triggerPrice": price_text(order.stop_price, spec) if conditional else empty,
            "tpLimitPrice": "0",
            "cumExecFee": fee,
            "slTriggerBy": "",
            "leavesQty": qty_text(leaves, spec),
            "closeOnTrigger": False,
            "placeType": "",
            "cumExecQty": qty_text(order.filled, spec),
            "reduceOnly": order.reduce_only,
            "qty": qty,
            "stopLoss": empty,
            "marketUnit": extra.market_unit,
            "smpOrderId": "",
            "triggerBy": "LastPrice" if conditional else "",
        }
    )
    if not spot:
        row["createType"] = "CreateByUser" if not conditional else "CreateByStopOrder"
        row["tpslMode"] = ""
        settle = spec.settle or spec.quote
        row["cumFeeDetail"] = {settle: fee} if order.fee_paid else {}
    return row


def exec_row(
    spec: SymbolSpec, fill: FakeFill, order: FakeOrder, extra: Extra, seq: int, ws: bool = False
) -> dict[str, Any]:
    spot = extra.category == SPOT
    value = fill.qty * fill.price
    rate = fill.fee / (value if fill.fee_currency != spec.base else fill.qty) if fill.qty else 0.0
    leaves = order.qty - order.filled if order.is_open else 0.0
    row: dict[str, Any] = {}
    if ws:
        row["category"] = extra.category
    row.update(
        {
            "symbol": spec.base + spec.quote,
            "orderType": extra.order_type or ("Limit" if order.price is not None else "Market"),
            "underlyingPrice": "",
            "orderLinkId": fill.client_id,
            "orderId": order_id_text(extra.category, fill.order_id),
            "stopOrderType": "" if spot else ("Stop" if order.stop_price else "UNKNOWN"),
            "execTime": str(fill.ts_ns // MS),
            "feeCurrency": fill.fee_currency if spot else "",
            "feeRate": number(rate),
            "tradeIv": "",
            "blockTradeId": "",
            "markPrice": "" if spot else price_text(fill.price, spec),
            "execPrice": price_text(fill.price, spec),
            "markIv": "",
            "orderQty": extra.quote_qty or qty_text(order.qty, spec),
            "orderPrice": price_text(order.price, spec) if order.price is not None else "0",
            "execValue": number(value),
            "closedSize": "" if spot else "0",
            "execType": "Trade",
            "seq": seq,
            "side": "Buy" if fill.side == "buy" else "Sell",
            "indexPrice": "",
            "leavesQty": qty_text(leaves, spec),
            "isMaker": fill.maker,
            "execFee": number(fill.fee),
            "execId": exec_id_text(extra.category, fill.trade_id),
            "marketUnit": extra.market_unit,
            "execQty": qty_text(fill.qty, spec),
        }
    )
    if not spot:
        row["createType"] = "CreateByUser"
    if ws:
        row["isLeverage"] = "0" if spot else ""
        row["execPnl"] = "0"
    return row


def position_row(
    spec: SymbolSpec, position: PerpPosition | None, mark: float, now_ns: int, ws: bool = False
) -> dict[str, Any]:
    qty = position.qty if position is not None else 0.0
    entry = position.entry_price if position is not None and qty else 0.0
    value = abs(qty) * entry * spec.contract_size
    side = "Buy" if qty > 0 else "Sell" if qty < 0 else ""
    row: dict[str, Any] = {"category": LINEAR} if ws else {}
    row.update(
        {
            "symbol": spec.base + spec.quote,
            "leverage": "10",
            "autoAddMargin": 0,
            "avgPrice": price_text(entry, spec) if qty else "0",
            "liqPrice": "",
            "riskLimitValue": "2000000",
            "takeProfit": "",
            "positionValue": number(value) if qty else "",
            "isReduceOnly": False,
            "tpslMode": "Full",
            "riskId": 1,
            "trailingStop": "0",
            "unrealisedPnl": number((mark - entry) * qty * spec.contract_size) if qty else "",
            "markPrice": price_text(mark, spec),
            "adlRankIndicator": 2 if qty else 0,
            "cumRealisedPnl": number(position.realized_pnl) if position is not None else "0",
            "positionMM": number(value * 0.005),
            "createdTime": str((position.updated_ns if position else now_ns) // MS),
            "positionIdx": 0,
            "positionIM": number(value / 10),
            "seq": now_ns // MS,
            "updatedTime": str((position.updated_ns if position else now_ns) // MS),
            "side": side,
            "bustPrice": "",
            "positionBalance": number(value / 10),
            "leverageSysUpdatedTime": "",
            "curRealisedPnl": "0",
            "size": qty_text(abs(qty), spec),
            "positionStatus": "Normal",
            "mmrSysUpdatedTime": "",
            "stopLoss": "",
            "tradeMode": 0,
            "sessionAvgPrice": "",
        }
    )
    if ws:
        row["entryPrice"] = row["avgPrice"]
    return row


def wallet(balances: dict[str, Balance], wanted: set[str] | None = None) -> dict[str, Any]:
    """The unified account: ``availableToWithdraw`` is empty on UTA 2.0, so ccxt takes
    ``free`` = wallet - ``locked`` - ``totalOrderIM`` - ``totalPositionIM``."""
    coins = []
    total = 0.0
    for coin, balance in sorted(balances.items()):
        if wanted and coin not in wanted:
            continue
        held = balance.free + balance.used
        total += held
        coins.append(
            {
                "availableToBorrow": "",
                "bonus": "0",
                "accruedInterest": "0",
                "availableToWithdraw": "",
                "totalOrderIM": "0",
                "equity": number(held),
                "totalPositionMM": "0",
                "usdValue": number(held),
                "unrealisedPnl": "0",
                "collateralSwitch": True,
                "spotHedgingQty": "0",
                "borrowAmount": "0.000000000000000000",
                "totalPositionIM": "0",
                "walletBalance": number(held),
                "cumRealisedPnl": "0",
                "locked": number(balance.used),
                "marginCollateral": True,
                "coin": coin,
            }
        )
    return {
        "totalEquity": number(total),
        "accountIMRate": "0",
        "totalMarginBalance": number(total),
        "totalInitialMargin": "0",
        "accountType": "UNIFIED",
        "totalAvailableBalance": number(total),
        "accountMMRate": "0",
        "totalPerpUPL": "0",
        "totalWalletBalance": number(total),
        "accountLTV": "0",
        "totalMaintenanceMargin": "0",
        "coin": coins,
    }


def api_key_info(now_ns: int) -> dict[str, Any]:
    """``/v5/user/query-api``: a unified trading account (``uta`` 1)."""
    return {
        "id": "13770661",
        "note": "keel-fake",
        "apiKey": "",
        "readOnly": 0,
        "secret": "",
        "permissions": {"ContractTrade": ["Order", "Position"], "Spot": ["SpotTrade"]},
        "ips": ["*"],
        "type": 1,
        "deadlineDay": 60,
        "expiredAt": "",
        "createdAt": str(now_ns // NS),
        "unified": 0,
        "uta": 1,
        "userID": 24600000,
        "inviterID": 0,
        "vipLevel": "No VIP",
        "mktMakerLevel": "0",
        "affiliateID": 0,
        "rsaPublicKey": "",
        "isMaster": True,
    }


def coin_row(coin: str) -> dict[str, Any]:
    chain = {
        "chainType": coin,
        "confirmation": "6",
        "withdrawFee": "0",
        "depositMin": "0",
        "withdrawMin": "0",
        "chain": coin,
        "chainDeposit": "1",
        "chainWithdraw": "1",
        "minAccuracy": "8",
        "withdrawPercentageFee": "0",
    }
    return {"name": coin, "coin": coin, "remainAmount": "1000000", "chains": [chain]}
