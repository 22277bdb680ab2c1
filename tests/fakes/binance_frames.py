"""Binance's frames and REST rows, written the way the exchange writes them.

Spot writes prices and quantities with 8 decimals, USDT-M futures with the tick's and the
lot's; spot ``bookTicker`` carries no event type, futures' does; key order follows the
recorded frames (``../shared/reference/ccxt-fixtures/ws-binance.json``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.fakes.core import NS, Candle, FakeExchange, SymbolSpec, Update, decimals, fmt

MS = 1_000_000
Writer = Callable[[float], str]


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
                "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET"],
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
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
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
