"""Kraken Futures (linear ``PF_`` perpetuals), as ccxt 4.5 talks to it.

REST: ``/derivatives/api/v3/instruments`` and ``tickers`` in ``{"result": "success", ...,
"serverTime"}`` envelopes (a rate limit is HTTP 429 ``apiLimitExceeded``), and the charts API
``/api/charts/v1/{trade|mark|spot}/{symbol}/{interval}?from=&to=`` (seconds, inclusive).
Websocket ``/ws/v1``: ``{"event": "subscribe", "feed": ..., "product_ids": [...]}``, feeds
``trade`` (a newest-first ``trade_snapshot``, then one frame per print), ``ticker`` (with
funding) and ``ticker_lite`` (bid/ask). There is no candle feed: Keel builds bars from the
trades, so the charts' trade candles are built here from exactly the prints the stream
sends (open = first print, close = last, volume = the sum), and a minute without trades
has no candle. Funding is hourly; tickers give it per contract (``fundingRate``) and relative
(``relative_funding_rate`` on the websocket). A delisting is ``tradeable: false``.

The private side, over ``fake.account`` (``tests.fakes.matching``): signed order and query
endpoints in ``krakenfutures_orders``, the account views (fills, wallet, positions, order
history) in ``krakenfutures_account``, and the ``challenge``-authenticated feeds on the same
``/ws/v1`` socket in ``krakenfutures_stream``.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
from aiohttp import web

from tests.fakes.core import (
    NS,
    Candle,
    Connection,
    FakeExchange,
    SymbolSpec,
    Topic,
    Update,
    decimals,
    fmt,
)
from tests.fakes.kraken import http_date, iso, number, recent_updates
from tests.fakes.krakenfutures_account import KrakenFuturesAccount
from tests.fakes.krakenfutures_orders import KrakenFuturesOrders
from tests.fakes.krakenfutures_stream import KrakenFuturesStream

HOUR_NS = 3600 * NS
CHART_ROWS = 2000
TRADE_SNAPSHOT = 100
CODES = {"BTC": "XBT"}
FEEDS = {"trade": "trade", "ticker": "ticker", "ticker_lite": "quote"}
PRIVATE_FEEDS = ("open_orders", "fills", "balances", "open_positions")


def product_id(spec: SymbolSpec) -> str:
    """``PF_XBTUSD`` for BTC/USD:USD (Kraken keeps XBT; ccxt maps it back)."""
    return f"PF_{CODES.get(spec.base, spec.base)}{spec.quote}"


def trade_uid(symbol: str, trade_id: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"krakenfutures:{symbol}:{trade_id}"))


class KrakenFuturesSkin:
    exchange_ids = ("krakenfutures",)
    ws_paths = ("/ws/v1",)
    heartbeat_s = 5.0

    def __init__(self, fake: FakeExchange, exchange_id: str) -> None:
        self.fake = fake
        self.ids = {spec.symbol: product_id(spec) for spec in fake.specs.values()}
        self.by_id = {pid: fake.specs[symbol] for symbol, pid in self.ids.items()}
        self.delisted_at: dict[str, int] = {}
        self.closed: dict[tuple[str, int], Candle] = {}
        self.heartbeats: set[asyncio.Task[None]] = set()
        self.orders = KrakenFuturesOrders(self)
        self.account_views = KrakenFuturesAccount(self)
        self.stream = KrakenFuturesStream(self)

    # -- REST ------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/derivatives/api/v3/instruments", self.instruments),
            web.get("/derivatives/api/v3/tickers", self.tickers),
            web.get("/derivatives/api/v3/tickers/{symbol}", self.ticker),
            web.get("/api/charts/v1/{price_type}/{symbol}/{interval}", self.charts),
            *self.orders.routes(),
            *self.account_views.routes(),
        ]

    def answer(self, body: dict[str, Any], status: int = 200) -> web.Response:
        now = self.fake.now_ns()
        if "candles" not in body:
            body = body | {"serverTime": iso(now, 3)}
        return web.Response(
            body=msgspec.json.encode(body),
            status=status,
            content_type="application/json",
            headers={"Date": http_date(now)},
        )

    def error(self, status: int) -> web.Response:
        if status == 429:
            return self.answer({"result": "error", "error": "apiLimitExceeded"}, status)
        if status >= 500:
            return self.answer({"result": "error", "error": "unavailable"}, status)
        return self.answer({"result": "error", "error": "requiredArgumentMissing"}, status)

    def cutoff(self, symbol: str) -> int | None:
        """When a delisted market stopped trading: the first time the fake saw it delisted
        (``Faults.delist`` keeps no time), so its history stops growing from there."""
        if not self.fake.is_delisted(symbol):
            return None
        return self.delisted_at.setdefault(symbol, self.fake.now_ns())

    async def instruments(self, request: web.Request) -> web.Response:
        out = []
        for spec in self.fake.specs.values():
            cvtp = (
                decimals(spec.lot_size) if spec.lot_size < 1 else -len(str(int(spec.lot_size))) + 1
            )
            out.append(
                {
                    "symbol": self.ids[spec.symbol],
                    "type": "flexible_futures",
                    "tradeable": self.cutoff(spec.symbol) is None,
                    "tickSize": spec.tick_size,
                    "contractSize": spec.contract_size,
                    "impactMidSize": 1,
                    "maxPositionSize": 1000000,
                    "openingDate": "2022-01-01T00:00:00.000Z",
                    "marginLevels": [
                        {"numNonContractUnits": 0, "initialMargin": 0.02, "maintenanceMargin": 0.01}
                    ],
                    "fundingRateCoefficient": 8,
                    "maxRelativeFundingRate": 0.001,
                    "contractValueTradePrecision": cvtp,
                    "postOnly": False,
                    "retailMarginLevels": [
                        {"numNonContractUnits": 0, "initialMargin": 0.5, "maintenanceMargin": 0.25}
                    ],
                    "category": "",
                    "tags": [],
                    "base": spec.base,
                    "quote": spec.quote,
                    "pair": f"{spec.base}:{spec.quote}",
                    "mtf": False,
                    "tradfi": False,
                }
            )
        return self.answer({"result": "success", "instruments": out})

    async def tickers(self, request: web.Request) -> web.Response:
        rows = [self.ticker_row(spec) for spec in self.fake.specs.values()]
        return self.answer({"result": "success", "tickers": rows})

    async def ticker(self, request: web.Request) -> web.Response:
        spec = self.by_id.get(request.match_info["symbol"].upper())
        if spec is None:
            return self.answer({"result": "error", "error": "contractNotFound"}, 400)
        return self.answer({"result": "success", "ticker": self.ticker_row(spec)})

    def ticker_row(self, spec: SymbolSpec) -> dict[str, Any]:
        stop = self.cutoff(spec.symbol)
        u = self.fake.snapshot(spec.symbol, stop)
        f = self.fake.funding(spec.symbol, stop)
        tick, c = spec.tick_size, u.candle
        mark = number(f.mark, tick)
        return {
            "tag": "perpetual",
            "pair": f"{CODES.get(spec.base, spec.base)}:{spec.quote}",
            "symbol": self.ids[spec.symbol],
            "markPrice": mark,
            "bid": number(u.bid, tick),
            "bidSize": number(u.bid_qty, spec.lot_size),
            "ask": number(u.ask, tick),
            "askSize": number(u.ask_qty, spec.lot_size),
            "vol24h": number(c.volume, spec.lot_size),
            "volumeQuote": round(c.volume * c.close, 2),
            "openInterest": 1000.0,
            "open24h": number(c.open, tick),
            "high24h": number(c.high, tick),
            "low24h": number(c.low, tick),
            "indexPrice": number(f.index, tick),
            "last": number(u.trade.price, tick),
            "lastTime": iso(u.trade.ts_ns, 3),
            "lastSize": number(u.trade.qty, spec.lot_size),
            "fundingRate": f.rate * mark,
            "fundingRatePrediction": f.rate * mark,
            "suspended": stop is not None,
            "postOnly": False,
            "change24h": round(100 * (c.close - c.open) / c.open, 2) if c.open else 0.0,
        }

    async def charts(self, request: web.Request) -> web.Response:
        price_type = request.match_info["price_type"]
        spec = self.by_id.get(request.match_info["symbol"].upper())
        if price_type not in ("trade", "mark", "spot") or spec is None:
            return self.answer({"candles": [], "more_candles": False})
        if request.match_info["interval"] != self.fake.interval:
            return self.answer({"result": "error", "error": "invalidArgument: interval"}, 400)
        step = self.fake.step_ns
        now = self.fake.now_ns()
        stop = self.cutoff(spec.symbol)
        try:
            to_ns = int(request.query["to"]) * NS if "to" in request.query else now
            from_ns = (
                int(request.query["from"]) * NS
                if "from" in request.query
                else to_ns - CHART_ROWS * step
            )
        except ValueError:
            return self.answer({"result": "error", "error": "invalidArgument: from/to"}, 400)
        last_open = self.fake.open_of(min(to_ns, now if stop is None else stop))
        open_ns = self.fake.open_of(from_ns + step - 1)
        candles: list[dict[str, Any]] = []
        while open_ns <= last_open and len(candles) < CHART_ROWS:
            candle = (
                self.trade_candle(spec, open_ns, stop)
                if price_type == "trade"
                else self.fake.path.candle(spec.symbol, open_ns)
            )
            if candle is not None:
                candles.append(self.chart_row(spec, candle, price_type == "trade"))
            open_ns += step
        more = open_ns <= last_open
        return self.answer({"candles": candles, "more_candles": more})

    def trade_candle(self, spec: SymbolSpec, open_ns: int, stop: int | None) -> Candle | None:
        """The candle of the prints the stream sends in ``open_ns``'s interval, up to now."""
        if open_ns in self.fake.faults.gaps:
            return None
        until = self.fake.now_ns() if stop is None else stop
        key = (spec.symbol, open_ns)
        if key in self.closed:
            return self.closed[key]
        tick = self.fake.step_ns // self.fake.updates_per_bar
        prints = [
            self.fake.snapshot(spec.symbol, ts).trade
            for ts in range(open_ns, open_ns + self.fake.step_ns, tick)
            if ts <= until
        ]
        if not prints:
            return None
        prices = [p.price for p in prints]
        volume = sum(p.qty for p in prints)
        candle = Candle(
            open_ns=open_ns,
            open=prices[0],
            high=max(prices),
            low=min(prices),
            close=prices[-1],
            volume=round(volume, decimals(spec.lot_size)),
            trades=len(prints),
        )
        if open_ns + self.fake.step_ns <= until:  # a closed minute never changes
            if len(self.closed) > 100_000:
                self.closed.clear()
            self.closed[key] = candle
        return candle

    def chart_row(self, spec: SymbolSpec, c: Candle, traded: bool) -> dict[str, Any]:
        tick = spec.tick_size
        return {
            "time": c.open_ns // 1_000_000,
            "open": fmt(c.open, tick, 11),
            "high": fmt(c.high, tick, 11),
            "low": fmt(c.low, tick, 11),
            "close": fmt(c.close, tick, 11),
            "volume": fmt(c.volume, spec.lot_size, 0) if traded else 0,
        }

    # -- websocket v1 ----------------------------------------------------------------------

    async def on_open(self, conn: Connection) -> None:
        await conn.send_json({"event": "info", "version": 1})

    async def on_message(self, conn: Connection, text: str) -> None:
        try:
            message = msgspec.json.decode(text)
        except msgspec.DecodeError:
            message = None
        if not isinstance(message, dict) or "event" not in message:
            await conn.send_json({"event": "error", "message": "Json Error"})
            return
        event, feed = message.get("event"), message.get("feed")
        if event == "challenge" or feed in PRIVATE_FEEDS:
            await self.stream.on_private(conn, message)
            return
        ids = message.get("product_ids") or []
        if event not in ("subscribe", "unsubscribe"):
            await conn.send_json({"event": "error", "message": "Invalid event"})
            return
        if feed == "heartbeat":
            await self.heartbeat_feed(conn, event)
            return
        if feed not in FEEDS:
            await conn.send_json({"event": "error", "message": "Invalid feed"})
            return
        specs = [self.by_id.get(str(pid).upper()) for pid in ids]
        if not ids or any(spec is None for spec in specs):
            await conn.send_json({"event": "error", "message": "Invalid product id"})
            return
        topics = [Topic(FEEDS[feed], s.symbol, f"{feed}:{self.ids[s.symbol]}") for s in specs if s]
        await conn.send_json(
            {"event": f"{event}d", "feed": feed, "product_ids": [str(i).upper() for i in ids]}
        )
        if event == "unsubscribe":
            conn.unsubscribe(topics)
            return
        conn.subscribe(topics)
        for topic in topics:
            if self.fake.is_delisted(topic.symbol):
                continue
            await self.send_snapshot(conn, topic)

    async def heartbeat_feed(self, conn: Connection, event: str) -> None:
        await conn.send_json({"event": f"{event}d", "feed": "heartbeat"})
        if event == "unsubscribe":
            task = conn.state.pop("heartbeat", None)
            if task is not None:
                task.cancel()
            return
        if "heartbeat" not in conn.state:
            task = asyncio.get_running_loop().create_task(self.heartbeat(conn))
            conn.state["heartbeat"] = task
            self.heartbeats.add(task)
            task.add_done_callback(self.heartbeats.discard)

    async def heartbeat(self, conn: Connection) -> None:
        """``{"feed": "heartbeat", "time": ms}`` every ``heartbeat_s`` (wall) while subscribed,
        silent or not."""
        while not conn.ws.closed:
            await asyncio.sleep(self.heartbeat_s)
            if not conn.ws.closed:
                ms = self.fake.now_ns() // 1_000_000
                try:
                    await conn.send_json({"feed": "heartbeat", "time": ms})
                except ConnectionError:
                    return

    async def send_snapshot(self, conn: Connection, topic: Topic) -> None:
        spec = self.fake.specs[topic.symbol]
        pid = self.ids[topic.symbol]
        if topic.kind == "trade":
            updates = recent_updates(self.fake, topic.symbol, TRADE_SNAPSHOT)
            trades = [self.trade_obj(spec, u, "trade") for u in reversed(updates)]
            await conn.send_json({"feed": "trade_snapshot", "product_id": pid, "trades": trades})
            return
        frame = self.format(topic, self.fake.snapshot(topic.symbol))
        if frame is not None:
            await conn.send_text(frame)

    def trade_obj(self, spec: SymbolSpec, u: Update, feed: str) -> dict[str, Any]:
        return {
            "feed": feed,
            "product_id": self.ids[spec.symbol],
            "uid": trade_uid(spec.symbol, u.trade.id),
            "side": "sell" if u.trade.buyer_maker else "buy",
            "type": "fill",
            "seq": u.trade.id,
            "time": u.trade.ts_ns // 1_000_000,
            "qty": number(u.trade.qty, spec.lot_size),
            "price": number(u.trade.price, spec.tick_size),
        }

    def format(self, topic: Topic, update: Update) -> str | None:
        spec = self.fake.specs.get(topic.symbol)
        if spec is None or topic.kind == "kline":
            return None
        if topic.kind == "trade":
            frame = self.trade_obj(spec, update, "trade")
        else:
            frame = self.ticker_obj(spec, update, topic.kind == "quote")
        return msgspec.json.encode(frame).decode()

    def ticker_obj(self, spec: SymbolSpec, u: Update, lite: bool) -> dict[str, Any]:
        tick, c = spec.tick_size, u.candle
        pid = self.ids[spec.symbol]
        pair = f"{CODES.get(spec.base, spec.base)}:{spec.quote}"
        change = round(100 * (c.close - c.open) / c.open, 6) if c.open else 0.0
        common = {
            "product_id": pid,
            "bid": number(u.bid, tick),
            "ask": number(u.ask, tick),
            "change": change,
            "premium": 0.0,
            "volume": number(c.volume, spec.lot_size),
            "tag": "perpetual",
            "pair": pair,
            "dtm": 0,
            "maturityTime": 0,
            "volumeQuote": round(c.volume * c.close, 2),
        }
        if lite:
            return {"feed": "ticker_lite"} | common
        f = self.fake.funding(spec.symbol, u.ts_ns)
        mark = number(f.mark, tick)
        return {
            "time": u.ts_ns // 1_000_000,
            "feed": "ticker",
            "funding_rate": f.rate * mark,
            "funding_rate_prediction": f.rate * mark,
            "relative_funding_rate": f.rate,
            "relative_funding_rate_prediction": f.rate,
            "next_funding_rate_time": (u.ts_ns // HOUR_NS + 1) * HOUR_NS // 1_000_000,
            "bid_size": number(u.bid_qty, spec.lot_size),
            "ask_size": number(u.ask_qty, spec.lot_size),
            "leverage": "50x",
            "index": number(f.index, tick),
            "last": number(u.trade.price, tick),
            "suspended": False,
            "openInterest": 1000.0,
            "markPrice": mark,
            "post_only": False,
        } | common

    def malformed(self, topic: Topic, update: Update) -> str:
        """Right feed and product, null values: ccxt passes them on as None. (A value its
        parser chokes on, e.g. a price "n/a", raises inside ccxt's receive loop, which then
        stops reading: the socket stays open and silent until ccxt's keepalive gives up.)"""
        pid = self.ids.get(topic.symbol, "PF_UNKNOWN")
        if topic.kind == "trade":
            frame: dict[str, Any] = {
                "feed": "trade",
                "product_id": pid,
                "uid": None,
                "side": "sideways",
                "type": "fill",
                "seq": None,
                "time": None,
                "qty": None,
                "price": None,
            }
        else:
            feed = "ticker_lite" if topic.kind == "quote" else "ticker"
            frame = {"feed": feed, "product_id": pid, "bid": None, "ask": None, "last": None}
        return msgspec.json.encode(frame).decode()

    def urls(self, http_url: str, ws_url: str) -> dict[str, Any]:
        return {
            "api": {
                "public": f"{http_url}/derivatives/api/",
                "private": f"{http_url}/derivatives/api/",
                "charts": f"{http_url}/api/charts/",
                "history": f"{http_url}/api/history/",
                "feeschedules": f"{http_url}/api/feeschedules/",
                "ws": f"{ws_url}/ws/v1",
            }
        }

    def options(self) -> dict[str, Any]:
        return {}
