"""Binance's frames and REST rows, written the way the exchange writes them.

Spot writes prices and quantities with 8 decimals, USDT-M futures with the tick's and the
lot's; spot ``bookTicker`` carries no event type, futures' does; key order follows the
recorded frames (``../shared/reference/ccxt-fixtures/ws-binance.json``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tests.fakes.core import NS, Candle, FakeExchange, SymbolSpec, Update, decimals, fmt

if TYPE_CHECKING:
    from tests.fakes.matching import Account, FakeFill, FakeOrder

MS = 1_000_000
Writer = Callable[[float], str]
SPOT_ORDER_TYPES = [
    "LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT",
    "TAKE_PROFIT_LIMIT",
]  # fmt: skip
FUTURES_ORDER_TYPES = [
    "LIMIT",
    "MARKET",
    "STOP",
    "STOP_MARKET",
    "TAKE_PROFIT",
    "TAKE_PROFIT_MARKET",
]


def market_id(spec: SymbolSpec) -> str:
    return f"{spec.base}{spec.quote}"


def ms(ns: int) -> int:
    return ns // MS


class BinanceFrames:
    def __init__(self, fake: FakeExchange) -> None:
        self.fake = fake
        self.interval_ms = fake.step_ns // MS

    def symbol_info(self, spec: SymbolSpec, futures: bool) -> dict[str, Any]:
        delisted = self.fake.is_delisted(spec.symbol)
        tick, lot = spec.tick_size, spec.lot_size
        price_filter = {
            "filterType": "PRICE_FILTER",
            "minPrice": fmt(tick, tick, 0 if futures else 8),
            "maxPrice": fmt(spec.price * 1000, tick, 0 if futures else 8),
            "tickSize": fmt(tick, tick, 0 if futures else 8),
        }
        lot_filter = {
            "filterType": "LOT_SIZE",
            "minQty": fmt(lot, lot, 0 if futures else 8),
            "maxQty": fmt(1e7 * lot, lot, 0 if futures else 8),
            "stepSize": fmt(lot, lot, 0 if futures else 8),
        }
        market_lot = {**lot_filter, "filterType": "MARKET_LOT_SIZE"}
        if futures:
            notional = {"filterType": "MIN_NOTIONAL", "notional": f"{spec.min_notional:g}"}
            return {
                "symbol": market_id(spec),
                "pair": market_id(spec),
                "contractType": "PERPETUAL",
                "deliveryDate": 4133404800000,
                "onboardDate": 1569398400000,
                "status": "SETTLING" if delisted else "TRADING",
                "baseAsset": spec.base,
                "quoteAsset": spec.quote,
                "marginAsset": spec.settle or spec.quote,
                "pricePrecision": decimals(tick),
                "quantityPrecision": decimals(lot),
                "baseAssetPrecision": 8,
                "quotePrecision": 8,
                "underlyingType": "COIN",
                "filters": [price_filter, lot_filter, market_lot, notional],
                "orderTypes": FUTURES_ORDER_TYPES,
                "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
            }
        notional = {
            "filterType": "NOTIONAL",
            "minNotional": fmt(spec.min_notional, 0.01),
            "applyMinToMarket": True,
            "maxNotional": "9000000.00000000",
            "applyMaxToMarket": False,
            "avgPriceMins": 5,
        }
        return {
            "symbol": market_id(spec),
            "status": "BREAK" if delisted else "TRADING",
            "baseAsset": spec.base,
            "baseAssetPrecision": 8,
            "quoteAsset": spec.quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "orderTypes": SPOT_ORDER_TYPES,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [price_filter, lot_filter, market_lot, notional],
            "permissions": ["SPOT"],
        }

    def kline_row(self, spec: SymbolSpec, candle: Candle, futures: bool) -> list[Any]:
        p, q = self.formats(spec, futures)
        quote_volume = candle.volume * candle.close
        return [
            ms(candle.open_ns),
            p(candle.open),
            p(candle.high),
            p(candle.low),
            p(candle.close),
            q(candle.volume),
            ms(candle.open_ns) + self.interval_ms - 1,
            fmt(quote_volume, 0.00001, 5 if futures else 8),
            candle.trades,
            q(candle.volume / 2),
            fmt(quote_volume / 2, 0.00001, 5 if futures else 8),
            "0",
        ]

    def formats(self, spec: SymbolSpec, futures: bool) -> tuple[Any, Any]:
        digits = 0 if futures else 8

        def price(value: float) -> str:
            return fmt(value, spec.tick_size, digits)

        def qty(value: float) -> str:
            return fmt(value, spec.lot_size, digits)

        return price, qty

    def ticker(self, spec: SymbolSpec, update: Update, futures: bool) -> dict[str, Any]:
        p, q = self.formats(spec, futures)
        day_ns = 86_400 * NS
        day_open = self.fake.path.candle(spec.symbol, update.candle.open_ns - day_ns).open
        last = update.candle.close
        high = max(day_open, last, update.candle.high)
        low = min(day_open, last, update.candle.low)
        volume = update.candle.volume * 1440
        row: dict[str, Any] = {
            "symbol": market_id(spec),
            "priceChange": p(last - day_open),
            "priceChangePercent": f"{(last / day_open - 1) * 100:.3f}",
            "weightedAvgPrice": p((high + low) / 2),
            "lastPrice": p(last),
            "lastQty": q(update.trade.qty),
            "openPrice": p(day_open),
            "highPrice": p(high),
            "lowPrice": p(low),
            "volume": q(volume),
            "quoteVolume": fmt(volume * last, 0.01),
            "openTime": ms(update.ts_ns - day_ns),
            "closeTime": ms(update.ts_ns),
            "firstId": max(0, update.trade.id - 10_000),
            "lastId": update.trade.id,
            "count": 10_000,
        }
        if not futures:
            row |= {
                "prevClosePrice": p(day_open),
                "bidPrice": p(update.bid),
                "bidQty": q(update.bid_qty),
                "askPrice": p(update.ask),
                "askQty": q(update.ask_qty),
            }
        return row

    def kline_event(self, spec: SymbolSpec, update: Update, futures: bool) -> dict[str, Any]:
        p, q = self.formats(spec, futures)
        candle = update.candle
        quote_volume = candle.volume * candle.close
        first_trade = update.trade.id - max(candle.trades, 1)
        return {
            "e": "kline",
            "E": ms(update.ts_ns),
            "s": market_id(spec),
            "k": {
                "t": ms(candle.open_ns),
                "T": ms(candle.open_ns) + self.interval_ms - 1,
                "s": market_id(spec),
                "i": self.fake.interval,
                "f": first_trade if candle.trades else -1,
                "L": update.trade.id if candle.trades else -1,
                "o": p(candle.open),
                "c": p(candle.close),
                "h": p(candle.high),
                "l": p(candle.low),
                "v": q(candle.volume),
                "n": candle.trades,
                "x": update.closed,
                "q": fmt(quote_volume, 0.00001, 5 if futures else 8),
                "V": q(candle.volume / 2),
                "Q": fmt(quote_volume / 2, 0.00001, 5 if futures else 8),
                "B": "0",
            },
        }

    def trade_event(
        self, spec: SymbolSpec, update: Update, futures: bool, aggregate: bool
    ) -> dict[str, Any]:
        p, q = self.formats(spec, futures)
        trade = update.trade
        at = ms(trade.ts_ns)
        if aggregate:
            data: dict[str, Any] = {
                "e": "aggTrade",
                "E": at,
                "s": market_id(spec),
                "a": trade.id,
                "p": p(trade.price),
                "q": q(trade.qty),
                "f": trade.id,
                "l": trade.id,
                "T": at,
                "m": trade.buyer_maker,
            }
            if not futures:
                data["M"] = True
            return data
        if futures:
            return {
                "e": "trade",
                "E": at,
                "T": at,
                "s": market_id(spec),
                "t": trade.id,
                "p": p(trade.price),
                "q": q(trade.qty),
                "X": "MARKET",
                "m": trade.buyer_maker,
                "st": 1,
            }
        return {
            "e": "trade",
            "E": at,
            "s": market_id(spec),
            "t": trade.id,
            "p": p(trade.price),
            "q": q(trade.qty),
            "T": at,
            "m": trade.buyer_maker,
            "M": True,
        }

    def book_event(self, spec: SymbolSpec, update: Update, futures: bool) -> dict[str, Any]:
        p, q = self.formats(spec, futures)
        book = {
            "u": update.update_id,
            "s": market_id(spec),
            "b": p(update.bid),
            "B": q(update.bid_qty),
            "a": p(update.ask),
            "A": q(update.ask_qty),
        }
        if futures:
            at = ms(update.ts_ns)
            return {"e": "bookTicker", **book, "T": at, "E": at}
        return book

    def ticker_event(
        self, spec: SymbolSpec, update: Update, futures: bool, mini: bool
    ) -> dict[str, Any]:
        full = self.ticker(spec, update, futures)
        data: dict[str, Any] = {
            "e": "24hrMiniTicker" if mini else "24hrTicker",
            "E": ms(update.ts_ns),
            "s": market_id(spec),
        }
        if futures:
            data["ps"] = market_id(spec)
        if not mini:
            data |= {
                "p": full["priceChange"],
                "P": full["priceChangePercent"],
                "w": full["weightedAvgPrice"],
            }
            if not futures:
                data |= {"x": full["prevClosePrice"]}
        data |= {"c": full["lastPrice"]}
        if not mini:
            data |= {"Q": full["lastQty"]}
            if not futures:
                data |= {
                    "b": full["bidPrice"],
                    "B": full["bidQty"],
                    "a": full["askPrice"],
                    "A": full["askQty"],
                }
        data |= {
            "o": full["openPrice"],
            "h": full["highPrice"],
            "l": full["lowPrice"],
            "v": full["volume"],
            "q": full["quoteVolume"],
        }
        if not mini:
            data |= {
                "O": full["openTime"],
                "C": full["closeTime"],
                "F": full["firstId"],
                "L": full["lastId"],
                "n": full["count"],
            }
        if futures:
            data["st"] = 1
        return data


# -- private: orders, trades, account ------------------------------------------------------

STATUS = {
    "new": "NEW", "partially_filled": "PARTIALLY_FILLED", "filled": "FILLED",
    "canceled": "CANCELED", "rejected": "REJECTED", "expired": "EXPIRED",
}  # fmt: skip
SPOT_TYPES = {
    "market": "MARKET", "limit": "LIMIT", "stop": "STOP_LOSS", "stop_limit": "STOP_LOSS_LIMIT",
    "take_profit": "TAKE_PROFIT", "take_profit_limit": "TAKE_PROFIT_LIMIT",
}  # fmt: skip
FUTURES_TYPES = {
    "market": "MARKET", "limit": "LIMIT", "stop": "STOP_MARKET", "stop_limit": "STOP",
    "take_profit": "TAKE_PROFIT_MARKET", "take_profit_limit": "TAKE_PROFIT",
}  # fmt: skip
ACTUAL_ID_OFFSET = 8_000_000_000
"""A triggered algo order's order in the matching engine: its own id, derived from the
algo id (Binance gives it a fresh one; ``actualOrderId`` / ``ai`` link the two)."""


def money(value: float) -> str:
    return fmt(value, 1e-8)


def order_type(order: FakeOrder, futures: bool) -> str:
    if not futures and order.type == "limit" and order.tif == "GTX":
        return "LIMIT_MAKER"
    return (FUTURES_TYPES if futures else SPOT_TYPES)[order.type]


def exchange_order_id(order: FakeOrder) -> int:
    """The id Binance's matching engine uses (an algo order's actual order once triggered)."""
    return order.order_id + ACTUAL_ID_OFFSET if order.algo else order.order_id


def algo_status(order: FakeOrder) -> str:
    if order.status in ("new", "partially_filled"):
        return "TRIGGERED" if order.triggered else "NEW"
    if order.status == "canceled" and not order.triggered:
        return "CANCELED"
    if order.status in ("rejected", "expired") and not order.triggered:
        return STATUS[order.status]
    return "FINISHED"


class OrderFrames:
    """Order rows (REST) and user-data events, spot with 8 decimals, futures with the
    tick's and the lot's, keys in the recorded frames' order (dense literals: one wire
    object each)."""

    def __init__(self, fake: FakeExchange) -> None:
        self.fake = fake

    def formats_of(self, symbol: str, futures: bool) -> tuple[SymbolSpec, Writer, Writer]:
        spec = self.fake.specs[symbol]
        digits = 0 if futures else 8

        def price(value: float | None) -> str:
            return fmt(value or 0.0, spec.tick_size, digits)

        def qty(value: float) -> str:
            return fmt(value, spec.lot_size, digits)

        return spec, price, qty

    def spot_account(self, account: Account, omit_zero: bool) -> dict[str, Any]:
        """``GET /api/v3/account``."""
        balances = [
            {"asset": asset, "free": money(b.free), "locked": money(b.used)}
            for asset, b in sorted(account.balances.items())
            if not (omit_zero and b.free == 0 and b.used == 0)
        ]
        maker, taker = account.maker_fee, account.taker_fee
        rates = {"maker": money(maker), "taker": money(taker), "buyer": money(0),
                 "seller": money(0)}  # fmt: skip
        flags = ("canTrade", "canWithdraw", "canDeposit", "brokered", "requireSelfTradePrevention",
                 "preventSor")  # fmt: skip
        body: dict[str, Any] = {
            "makerCommission": round(maker * 10_000), "takerCommission": round(taker * 10_000),
            "buyerCommission": 0, "sellerCommission": 0, "commissionRates": rates,
            **{flag: flag.startswith("can") for flag in flags},
            "updateTime": ms(self.fake.now_ns()), "accountType": "SPOT", "balances": balances,
            "permissions": ["SPOT"], "uid": 354937868,
        }  # fmt: skip
        return body

    def positions(self, account: Account, only: SymbolSpec | None) -> list[dict[str, Any]]:
        """``positionRisk`` rows (v3: only symbols with a position)."""
        symbol = None if only is None else only.symbol
        rows = []
        for sym, position in sorted(account.positions.items()):
            spec = self.fake.specs.get(sym)
            if spec is None or (symbol is not None and sym != symbol) or position.qty == 0:
                continue
            mark = self.fake.funding(sym).mark
            _, p, q = self.formats_of(sym, True)
            notional = position.qty * mark
            margin = money(abs(notional) / account.leverage)
            rows.append({
                "symbol": market_id(spec), "positionSide": "BOTH", "positionAmt": q(position.qty),
                "entryPrice": p(position.entry_price), "breakEvenPrice": p(position.entry_price),
                "markPrice": money(mark), "unRealizedProfit": money(position.unrealized(mark)),
                "liquidationPrice": "0", "isolatedMargin": "0", "notional": money(notional),
                "marginAsset": spec.settle or spec.quote, "isolatedWallet": "0",
                "initialMargin": margin, "maintMargin": money(abs(notional) * 0.004),
                "positionInitialMargin": margin, "openOrderInitialMargin": "0", "adl": 0,
                "bidNotional": "0", "askNotional": "0", "updateTime": ms(position.updated_ns),
            })  # fmt: skip
        return rows

    def futures_account(self, account: Account) -> dict[str, Any]:
        """``/fapi/v3/account`` (also served as v2): per asset, wallet = free + used (the
        initial margin), available = free; totals over the assets."""
        positions = self.positions(account, None)
        pnl_of: dict[str, float] = {}
        for row in positions:
            asset = row["marginAsset"]
            pnl_of[asset] = pnl_of.get(asset, 0.0) + float(row["unRealizedProfit"])

        def sums(wallet: float, used: float, free: float, pnl: float) -> dict[str, str]:
            return {
                "WalletBalance": money(wallet), "UnrealizedProfit": money(pnl),
                "MarginBalance": money(wallet + pnl), "MaintMargin": money(0),
                "InitialMargin": money(used), "PositionInitialMargin": money(used),
                "OpenOrderInitialMargin": money(0), "CrossWalletBalance": money(wallet),
                "CrossUnPnl": money(pnl), "AvailableBalance": money(free),
                "MaxWithdrawAmount": money(free),
            }  # fmt: skip

        assets = []
        for asset, b in sorted(account.balances.items()):
            fields = sums(b.free + b.used, b.used, b.free, pnl_of.get(asset, 0.0))
            row = {k[0].lower() + k[1:]: v for k, v in fields.items()}
            assets.append({"asset": asset, **row, "updateTime": ms(self.fake.now_ns())})
        balances = account.balances.values()
        totals = sums(
            sum(b.free + b.used for b in balances),
            sum(b.used for b in balances),
            sum(b.free for b in balances),
            sum(pnl_of.values()),
        )
        body = {f"total{k}": v for k, v in totals.items() if not k.startswith(("Avail", "Max"))}
        kept = ("symbol", "positionSide", "positionAmt", "unRealizedProfit", "notional",
                "initialMargin", "maintMargin", "updateTime")  # fmt: skip
        return body | {
            "availableBalance": totals["AvailableBalance"],
            "maxWithdrawAmount": totals["MaxWithdrawAmount"],
            "assets": assets,
            "positions": [{k: p[k] for k in kept} for p in positions],
        }

    @staticmethod
    def _quote(value: float, futures: bool) -> str:
        return fmt(value, 0.00001, 5 if futures else 8)

    def spot_order(self, order: FakeOrder, kind: str = "query") -> dict[str, Any]:
        """``kind``: ``query`` (GET order/openOrders/allOrders), ``new`` (POST order),
        ``cancel`` (DELETE order: ``clientOrderId`` is then the cancel's own id)."""
        spec, p, q = self.formats_of(order.symbol, False)
        row: dict[str, Any] = {"symbol": market_id(spec)}
        if kind == "cancel":
            row["origClientOrderId"] = order.client_id
        row |= {"orderId": order.order_id, "orderListId": -1}
        if kind != "cancel":
            row["clientOrderId"] = order.client_id
        if kind in ("new", "cancel"):
            row["transactTime"] = ms(order.updated_ns)
        row |= {
            "price": p(order.price), "origQty": q(order.qty), "executedQty": q(order.filled),
            "cummulativeQuoteQty": self._quote(order.filled * order.avg_price, False),
            "status": STATUS[order.status], "timeInForce": "GTC" if order.tif == "GTX" else order.tif,
            "type": order_type(order, False), "side": order.side.upper(),
        }  # fmt: skip
        if order.stop_price is not None or kind == "query":
            row["stopPrice"] = p(order.stop_price)
        if kind == "query":
            row |= {"icebergQty": "0.00000000", "time": ms(order.created_ns),
                    "updateTime": ms(order.updated_ns),
                    "isWorking": order.stop_price is None or order.triggered}  # fmt: skip
        if kind != "cancel":
            row["workingTime"] = ms(order.created_ns)
        return row | {"origQuoteOrderQty": "0.00000000", "selfTradePreventionMode": "EXPIRE_MAKER"}

    def spot_fill(self, fill: FakeFill) -> dict[str, Any]:
        """One entry of a FULL answer's ``fills``."""
        _, p, q = self.formats_of(fill.symbol, False)
        return {"price": p(fill.price), "qty": q(fill.qty), "commission": fmt(fill.fee, 1e-8),
                "commissionAsset": fill.fee_currency, "tradeId": fill.trade_id}  # fmt: skip

    def futures_order(self, order: FakeOrder, kind: str = "query") -> dict[str, Any]:
        """``kind``: ``query`` (GET order/openOrders) or ``new`` (POST/PUT/DELETE answer,
        with ``cumQty``). A triggered algo order is its actual order here: MARKET (LIMIT
        for a stop-limit or take-profit-limit) with the algo's type as ``origType``."""
        spec, p, q = self.formats_of(order.symbol, True)
        orig = order_type(order, True)
        limit = order.type in ("stop_limit", "take_profit_limit")
        type_ = ("LIMIT" if limit else "MARKET") if order.algo else orig
        row: dict[str, Any] = {
            "orderId": exchange_order_id(order), "symbol": market_id(spec),
            "status": STATUS[order.status], "clientOrderId": order.client_id,
            "price": p(order.price), "avgPrice": p(order.avg_price) if order.filled else "0",
            "origQty": q(order.qty), "executedQty": q(order.filled),
        }  # fmt: skip
        if kind == "new":
            row["cumQty"] = q(order.filled)
        row |= {
            "cumQuote": self._quote(order.filled * order.avg_price, True),
            "timeInForce": order.tif, "type": type_, "reduceOnly": order.reduce_only,
            "closePosition": False, "side": order.side.upper(), "positionSide": "BOTH",
            "stopPrice": "0", "workingType": "CONTRACT_PRICE", "priceProtect": False,
            "origType": orig, "priceMatch": "NONE", "selfTradePreventionMode": "EXPIRE_MAKER",
            "goodTillDate": 0,
        }  # fmt: skip
        if kind == "query":
            row["time"] = ms(order.created_ns)
        return row | {"updateTime": ms(order.updated_ns)}

    def algo_order(self, order: FakeOrder, kind: str = "query") -> dict[str, Any]:
        """A conditional order on ``/fapi/v1/algoOrder``: ``new``, ``query`` (with the
        actual order's id, price and quantity) or the short ``cancel`` answer."""
        spec, p, q = self.formats_of(order.symbol, True)
        ids = {"algoId": order.order_id, "clientAlgoId": order.client_id}
        if kind == "cancel":
            return ids | {"code": "200", "msg": "success"}
        row = ids | {
            "algoType": "CONDITIONAL", "orderType": order_type(order, True),
            "symbol": market_id(spec), "side": order.side.upper(), "positionSide": "BOTH",
            "timeInForce": order.tif, "quantity": q(order.qty), "algoStatus": algo_status(order),
            "triggerPrice": p(order.stop_price), "price": p(order.price),
            "icebergQuantity": None, "selfTradePreventionMode": "EXPIRE_MAKER",
            "workingType": "CONTRACT_PRICE", "priceMatch": "NONE", "closePosition": False,
            "priceProtect": False, "reduceOnly": order.reduce_only,
            "createTime": ms(order.created_ns), "updateTime": ms(order.updated_ns),
            "triggerTime": ms(order.updated_ns) if order.triggered else 0, "goodTillDate": 0,
        }  # fmt: skip
        if kind == "query":
            row |= {
                "actualOrderId": str(exchange_order_id(order)) if order.triggered else "",
                "actualPrice": p(order.avg_price) if order.filled else "0",
                "executedQty": q(order.filled) if order.triggered else "0",
            }
        return row

    def my_trade(self, fill: FakeFill, order: FakeOrder | None, futures: bool) -> dict[str, Any]:
        spec, p, q = self.formats_of(fill.symbol, futures)
        order_id = fill.order_id if order is None else exchange_order_id(order)
        head = {"symbol": market_id(spec), "id": fill.trade_id, "orderId": order_id}
        money = {"commission": fmt(fill.fee, 1e-8), "commissionAsset": fill.fee_currency,
                 "time": ms(fill.ts_ns)}  # fmt: skip
        quote = self._quote(fill.qty * fill.price, futures)
        if futures:
            return head | {
                "side": fill.side.upper(), "price": p(fill.price), "qty": q(fill.qty),
                "realizedPnl": "0", "marginAsset": spec.settle or spec.quote, "quoteQty": quote,
                **money, "positionSide": "BOTH", "maker": fill.maker, "buyer": fill.side == "buy",
            }  # fmt: skip
        return head | {
            "orderListId": -1, "price": p(fill.price), "qty": q(fill.qty), "quoteQty": quote,
            **money, "isBuyer": fill.side == "buy", "isMaker": fill.maker, "isBestMatch": True,
        }  # fmt: skip

    def execution_report(
        self, order: FakeOrder, fill: FakeFill | None, execution: str
    ) -> dict[str, Any]:
        """Spot ``executionReport`` (``x``: NEW, CANCELED, TRADE, EXPIRED, ...)."""
        spec, p, q = self.formats_of(order.symbol, False)
        at = ms(fill.ts_ns if fill else order.updated_ns)
        last_qty, last_price = (fill.qty, fill.price) if fill else (0.0, 0.0)
        working = order.is_open and (order.stop_price is None or order.triggered)
        return {
            "e": "executionReport", "E": at, "s": market_id(spec), "c": order.client_id,
            "S": order.side.upper(), "o": order_type(order, False),
            "f": "GTC" if order.tif == "GTX" else order.tif, "q": q(order.qty),
            "p": p(order.price), "P": p(order.stop_price), "F": "0.00000000", "g": -1,
            "C": order.client_id if execution == "CANCELED" else "", "x": execution,
            "X": STATUS[order.status], "r": "NONE", "i": order.order_id, "l": q(last_qty),
            "z": q(order.filled), "L": p(last_price), "n": fmt(fill.fee, 1e-8) if fill else "0",
            "N": fill.fee_currency if fill else None, "T": at,
            "t": fill.trade_id if fill else -1,
            "I": order.order_id * 2 + (fill.trade_id if fill else 0), "w": working,
            "m": fill.maker if fill else False, "M": fill is not None,
            "O": ms(order.created_ns), "Z": self._quote(order.filled * order.avg_price, False),
            "Y": self._quote(last_qty * last_price, False), "Q": "0.00000000",
            "W": ms(order.created_ns), "V": "EXPIRE_MAKER",
        }  # fmt: skip

    def order_trade_update(
        self, order: FakeOrder, fill: FakeFill | None, execution: str
    ) -> dict[str, Any]:
        """USDT-M ``ORDER_TRADE_UPDATE`` (``x``: NEW, CANCELED, EXPIRED, TRADE, AMENDMENT)."""
        spec, p, q = self.formats_of(order.symbol, True)
        at = ms(fill.ts_ns if fill else order.updated_ns)
        row = self.futures_order(order)
        body: dict[str, Any] = {
            "s": market_id(spec), "c": order.client_id, "S": order.side.upper(),
            "o": row["type"], "f": order.tif, "q": q(order.qty), "p": p(order.price),
            "ap": row["avgPrice"], "sp": "0", "x": execution, "X": STATUS[order.status],
            "i": exchange_order_id(order), "l": q(fill.qty if fill else 0.0),
            "z": q(order.filled), "L": p(fill.price if fill else 0.0),
        }  # fmt: skip
        if fill is not None:
            body |= {"N": fill.fee_currency, "n": fmt(fill.fee, 1e-8)}
        body |= {
            "T": at, "t": fill.trade_id if fill else 0, "b": "0", "a": "0",
            "m": fill.maker if fill else False, "R": order.reduce_only, "wt": "CONTRACT_PRICE",
            "ot": row["origType"], "ps": "BOTH", "cp": False, "rp": "0", "pP": False, "si": 0,
            "ss": 0, "V": "EXPIRE_MAKER", "pm": "NONE", "gtd": 0,
        }  # fmt: skip
        return {"e": "ORDER_TRADE_UPDATE", "E": at, "T": at, "o": body}

    def algo_update(self, order: FakeOrder) -> dict[str, Any]:
        """USDT-M ``ALGO_UPDATE``: a conditional order's own life (NEW, CANCELED,
        TRIGGERED, FINISHED, ...); its fills come as the actual order's ORDER_TRADE_UPDATE."""
        spec, p, q = self.formats_of(order.symbol, True)
        at = ms(order.updated_ns)
        body = {
            "caid": order.client_id, "aid": order.order_id, "at": "CONDITIONAL",
            "o": order_type(order, True), "s": market_id(spec), "S": order.side.upper(),
            "ps": "BOTH", "f": order.tif, "q": q(order.qty), "X": algo_status(order),
            "ai": str(exchange_order_id(order)) if order.triggered else "",
            "ap": p(order.avg_price) if order.filled else "0.00000",
            "aq": q(order.filled) if order.triggered else "0.00000", "act": "0",
            "tp": p(order.stop_price), "p": p(order.price), "V": "EXPIRE_MAKER",
            "wt": "CONTRACT_PRICE", "pm": "NONE", "cp": False, "pP": False,
            "R": order.reduce_only, "tt": at if order.triggered else 0, "gtd": 0, "rm": "",
        }  # fmt: skip
        return {"e": "ALGO_UPDATE", "T": at, "E": at, "o": body}
