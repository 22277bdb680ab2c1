"""Kraken spot, as ccxt 4.5 talks to it: REST ``/0/public/*`` and websocket API v2.

REST answers in Kraken's ``{"error": [...], "result": {...}}`` envelope, with HTTP 200 even
for a rate limit (``EAPI:Rate limit exceeded``). Assets keep Kraken's legacy names (``XXBT``,
``ZUSD``, pair ``XXBTZUSD``, altname ``XBTUSD``); ccxt maps them to BTC/USD. OHLC honours
``since`` (exclusive, seconds), never reaches back more than 720 intervals, always ends
with the forming candle (even for a ``since`` past it), has no row for a minute without trades, and gives ``last`` (the
newest committed candle's open). A delisted pair leaves AssetPairs and is an unknown pair.
ccxt's ``watchOHLCV``/``watchTrades``/``watchTicker``/``watchBidsAsks`` use websocket v2
(``/v2``): ``{"method": "subscribe", "params": {...}, "req_id": n}`` acknowledged per symbol,
a snapshot, then updates; ``{"channel": "heartbeat"}`` every second, also while silent.
The private side (orders, trades, balances, the ``executions`` channel on ``/ws-auth/v2``)
is ``kraken_orders.py`` and ``kraken_executions.py``.
"""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate
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
    snap,
)

OHLC_ROWS = 720
OHLC_SNAPSHOT = 10
TRADE_SNAPSHOT = 50
LEGACY = {
    "BTC": ("XXBT", "XBT"),
    "ETH": ("XETH", "ETH"),
    "XRP": ("XXRP", "XRP"),
    "DOGE": ("XXDG", "XDG"),
    "LTC": ("XLTC", "LTC"),
    "XLM": ("XXLM", "XLM"),
    "USD": ("ZUSD", "USD"),
    "EUR": ("ZEUR", "EUR"),
    "GBP": ("ZGBP", "GBP"),
    "JPY": ("ZJPY", "JPY"),
    "CAD": ("ZCAD", "CAD"),
}
FIAT = {"USD", "EUR", "GBP", "JPY", "CAD"}
PRIVATE_WS = "/ws-auth/v2"
"""ws-auth.kraken.com/v2 on this server: a URL of its own, so ccxt keeps a separate socket."""


def iso(ns: int, digits: int = 6) -> str:
    """RFC 3339 in UTC with ``digits`` fractional digits, as Kraken writes it."""
    seconds, rest = divmod(ns, NS)
    head = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{head}.{rest // 10 ** (9 - digits):0{digits}d}Z" if digits else f"{head}Z"


def http_date(ns: int) -> str:
    """The ``Date`` header at exchange time (a skew check may read it)."""
    return formatdate(ns / NS, usegmt=True)


def asset_ids(code: str) -> tuple[str, str]:
    """Kraken's asset id and altname for a unified code (BTC -> XXBT, XBT)."""
    return LEGACY.get(code, (code, code))


def pair_names(spec: SymbolSpec) -> tuple[str, str, str]:
    """Pair id, altname and the v1 wsname: legacy pairs join the X/Z ids (``XXBTZUSD``),
    newer ones the altnames (``SOLUSD``, ``XBTUSDT``)."""
    base_id, base_alt = asset_ids(spec.base)
    quote_id, quote_alt = asset_ids(spec.quote)
    legacy = spec.base in LEGACY and spec.quote in LEGACY and spec.base not in FIAT
    pair_id = base_id + quote_id if legacy else base_alt + quote_alt
    return pair_id, base_alt + quote_alt, f"{base_alt}/{quote_alt}"


def number(value: float, step: float) -> float:
    """A JSON number with the step's decimals (v2 frames carry numbers, not strings)."""
    return round(value, decimals(step))


class KrakenSkin:
    exchange_ids = ("kraken",)
    ws_paths = ("/v2", PRIVATE_WS)

    def __init__(self, fake: FakeExchange, exchange_id: str) -> None:
        self.fake = fake
        self.by_pair: dict[str, SymbolSpec] = {}
        self.names: dict[str, tuple[str, str, str]] = {}
        for spec in fake.specs.values():
            names = pair_names(spec)
            self.names[spec.symbol] = names
            self.by_pair[names[0]] = spec
            self.by_pair[names[1]] = spec
        self.minutes = fake.step_ns // (60 * NS)
        self.heartbeats: set[asyncio.Task[None]] = set()
        # imported here: the private side builds on this module's wire helpers
        from tests.fakes.kraken_executions import KrakenExecutions
        from tests.fakes.kraken_orders import KrakenPrivate

        self.private = KrakenPrivate(self)
        self.executions = KrakenExecutions(self.private)

    # -- REST ------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            *self.private.routes(),
            web.get("/0/public/Time", self.time),
            web.get("/0/public/SystemStatus", self.system_status),
            web.get("/0/public/Assets", self.assets),
            web.get("/0/public/AssetPairs", self.asset_pairs),
            web.get("/0/public/OHLC", self.ohlc),
            web.get("/0/public/Ticker", self.ticker),
        ]

    def answer(
        self, result: Any = None, errors: tuple[str, ...] = (), status: int = 200
    ) -> web.Response:
        body: dict[str, Any] = {"error": list(errors)}
        if not errors:
            body["result"] = result
        return web.Response(
            body=msgspec.json.encode(body),
            status=status,
            content_type="application/json",
            headers={"Date": http_date(self.fake.now_ns())},
        )

    def error(self, status: int) -> web.Response:
        """Kraken's own words: a rate limit is an error in a 200 answer; an outage a 5xx."""
        if status == 429:
            return self.answer(errors=("EAPI:Rate limit exceeded",))
        if status == 503:
            return self.answer(errors=("EService:Unavailable",), status=503)
        if status >= 500:
            return self.answer(errors=("EGeneral:Internal error",), status=status)
        return self.answer(errors=("EGeneral:Invalid arguments",), status=status)

    def listed(self) -> list[SymbolSpec]:
        return [s for s in self.fake.specs.values() if not self.fake.is_delisted(s.symbol)]

    def spec_of(self, pair: str) -> SymbolSpec | None:
        spec = self.by_pair.get(pair)
        return None if spec is None or self.fake.is_delisted(spec.symbol) else spec

    async def time(self, request: web.Request) -> web.Response:
        now = self.fake.now_ns()
        rfc1123 = time.strftime("%a, %d %b %y %H:%M:%S +0000", time.gmtime(now // NS))
        return self.answer({"unixtime": now // NS, "rfc1123": rfc1123})

    async def system_status(self, request: web.Request) -> web.Response:
        return self.answer({"status": "online", "timestamp": iso(self.fake.now_ns(), 0)})

    async def assets(self, request: web.Request) -> web.Response:
        codes = sorted({c for s in self.fake.specs.values() for c in (s.base, s.quote)})
        result = {}
        for code in codes:
            asset_id, altname = asset_ids(code)
            fiat = code in FIAT
            result[asset_id] = {
                "aclass": "currency",
                "altname": altname,
                "decimals": 4 if fiat else 10,
                "display_decimals": 2 if fiat else 5,
                "collateral_value": 1.0 if fiat else 0.95,
                "status": "enabled",
            }
        return self.answer(result)

    async def asset_pairs(self, request: web.Request) -> web.Response:
        wanted = request.query.get("pair")
        result = {}
        for spec in self.listed():
            pair_id, altname, wsname = self.names[spec.symbol]
            if wanted and pair_id not in wanted.split(",") and altname not in wanted.split(","):
                continue
            result[pair_id] = self.pair_info(spec, altname, wsname)
        return self.answer(result)

    def pair_info(self, spec: SymbolSpec, altname: str, wsname: str) -> dict[str, Any]:
        base_id = asset_ids(spec.base)[0]
        quote_id = asset_ids(spec.quote)[0]
        return {
            "altname": altname,
            "wsname": wsname,
            "aclass_base": "currency",
            "base": base_id,
            "aclass_quote": "currency",
            "quote": quote_id,
            "lot": "unit",
            "cost_decimals": max(5, decimals(spec.tick_size)),
            "pair_decimals": decimals(spec.tick_size),
            "lot_decimals": decimals(spec.lot_size),
            "lot_multiplier": 1,
            "leverage_buy": [2, 3],
            "leverage_sell": [2, 3],
            "fees": [[0, 0.4], [10000, 0.35], [50000, 0.24]],
            "fees_maker": [[0, 0.25], [10000, 0.2], [50000, 0.14]],
            "fee_volume_currency": "ZUSD",
            "margin_call": 80,
            "margin_stop": 40,
            "ordermin": fmt(spec.lot_size, spec.lot_size, 0),
            "costmin": fmt(spec.min_notional, 0.01, 2),
            "tick_size": fmt(spec.tick_size, spec.tick_size, 0),
            "status": "online",
            "long_position_limit": 270,
            "short_position_limit": 180,
        }

    async def ohlc(self, request: web.Request) -> web.Response:
        spec = self.spec_of(request.query.get("pair", ""))
        if spec is None:
            return self.answer(errors=("EQuery:Unknown asset pair",))
        try:
            interval = int(request.query.get("interval", "1"))
            since = int(float(request.query.get("since", "0")))
        except ValueError:
            return self.answer(errors=("EGeneral:Invalid arguments",))
        if interval != self.minutes:
            return self.answer(errors=("EGeneral:Invalid arguments:interval",))
        step = self.fake.step_ns
        forming = self.fake.open_of(self.fake.now_ns())
        start = max(since * NS + 1, forming - (OHLC_ROWS - 1) * step)
        rows = self.fake.history(spec.symbol, start_ns=start, limit=OHLC_ROWS)
        if not rows or rows[-1].open_ns < forming:  # the forming row, whatever ``since`` says
            rows += self.fake.history(spec.symbol, start_ns=forming, limit=1)
        pair_id = self.names[spec.symbol][0]
        return self.answer(
            {pair_id: [self.ohlc_row(spec, c) for c in rows], "last": (forming - step) // NS}
        )

    def ohlc_row(self, spec: SymbolSpec, c: Candle) -> list[Any]:
        tick, lot = spec.tick_size, spec.lot_size
        vwap = snap((c.open + c.high + c.low + c.close) / 4, tick)
        return [
            c.open_ns // NS,
            fmt(c.open, tick, 1),
            fmt(c.high, tick, 1),
            fmt(c.low, tick, 1),
            fmt(c.close, tick, 1),
            fmt(vwap, tick, 1),
            fmt(c.volume, lot, 8),
            c.trades,
        ]

    async def ticker(self, request: web.Request) -> web.Response:
        pairs = request.query.get("pair")
        specs = self.listed()
        if pairs:
            specs = [s for p in pairs.split(",") if (s := self.spec_of(p)) is not None]
            if not specs:
                return self.answer(errors=("EQuery:Unknown asset pair",))
        result = {}
        for spec in specs:
            u = self.fake.snapshot(spec.symbol)
            tick, lot = spec.tick_size, spec.lot_size
            c = u.candle
            result[self.names[spec.symbol][0]] = {
                "a": [fmt(u.ask, tick, 5), "1", fmt(u.ask_qty, lot, 3)],
                "b": [fmt(u.bid, tick, 5), "1", fmt(u.bid_qty, lot, 3)],
                "c": [fmt(u.trade.price, tick, 5), fmt(u.trade.qty, lot, 8)],
                "v": [fmt(c.volume, lot, 8), fmt(c.volume, lot, 8)],
                "p": [fmt(c.close, tick, 5), fmt(c.close, tick, 5)],
                "t": [c.trades, c.trades],
                "l": [fmt(c.low, tick, 5), fmt(c.low, tick, 5)],
                "h": [fmt(c.high, tick, 5), fmt(c.high, tick, 5)],
                "o": fmt(c.open, tick, 5),
            }
        return self.answer(result)

    # -- websocket v2 ----------------------------------------------------------------------

    async def on_open(self, conn: Connection) -> None:
        await conn.send_json(
            {
                "channel": "status",
                "type": "update",
                "data": [
                    {
                        "version": "2.0.10",
                        "system": "online",
                        "api_version": "v2",
                        "connection_id": id(conn) % 10**19,
                    }
                ],
            }
        )
        task = asyncio.get_running_loop().create_task(self.heartbeat(conn))
        self.heartbeats.add(task)
        task.add_done_callback(self.heartbeats.discard)

    async def heartbeat(self, conn: Connection) -> None:
        """One ``{"channel": "heartbeat"}`` a second once subscribed, silent or not."""
        while not conn.ws.closed:
            await asyncio.sleep(1.0)
            if (conn.topics or self.executions.listening(conn)) and not conn.ws.closed:
                try:
                    await conn.send_text('{"channel":"heartbeat"}')
                except ConnectionError:
                    return

    def stamp(self, received: str) -> dict[str, str]:
        return {"time_in": received, "time_out": iso(self.fake.now_ns())}

    async def on_message(self, conn: Connection, text: str) -> None:
        received = iso(self.fake.now_ns())
        try:
            message = msgspec.json.decode(text)
        except msgspec.DecodeError:
            message = None
        if not isinstance(message, dict):
            await conn.send_json(
                {"error": "Malformed request", "success": False, **self.stamp(received)}
            )
            return
        method = message.get("method")
        req_id = message.get("req_id")
        echo = {} if req_id is None else {"req_id": req_id}
        if method == "ping":
            await conn.send_json({"method": "pong", **echo, **self.stamp(received)})
            return
        if conn.path == PRIVATE_WS:
            await self.executions.on_message(conn, message, echo)
            return
        if method not in ("subscribe", "unsubscribe"):
            await conn.send_json(
                {
                    "error": f"Method {method!r} not supported by this fake",
                    "method": method,
                    "success": False,
                    **echo,
                    **self.stamp(received),
                }
            )
            return
        params = message.get("params") or {}
        channel = params.get("channel")
        symbols = params.get("symbol") or []
        for symbol in symbols:
            problem = self.refusal(channel, symbol, params)
            if problem:
                await conn.send_json(
                    {
                        "error": problem,
                        "method": method,
                        "success": False,
                        "symbol": symbol,
                        **echo,
                        **self.stamp(received),
                    }
                )
                continue
            topic = self.topic(channel, symbol, params)
            result = self.result(channel, symbol, params)
            await conn.send_json(
                {"method": method, **echo, "result": result, "success": True} | self.stamp(received)
            )
            if method == "unsubscribe":
                conn.unsubscribe([topic])
                continue
            conn.subscribe([topic])
            if params.get("snapshot", True):
                await self.send_snapshot(conn, topic)

    def refusal(self, channel: Any, symbol: Any, params: dict[str, Any]) -> str:
        if channel not in ("ohlc", "trade", "ticker"):
            return f"Subscription name invalid: {channel}"
        if not isinstance(symbol, str) or symbol not in self.fake.specs:
            return f"Currency pair not supported {symbol}"
        if self.fake.is_delisted(symbol):
            return f"Currency pair not supported {symbol}"
        if channel == "ohlc" and params.get("interval") != self.minutes:
            return "Subscription ohlc interval not supported"
        return ""

    def topic(self, channel: str, symbol: str, params: dict[str, Any]) -> Topic:
        if channel == "ohlc":
            return Topic("kline", symbol, f"ohlc:{symbol}:{self.minutes}")
        if channel == "trade":
            return Topic("trade", symbol, f"trade:{symbol}")
        trigger = params.get("event_trigger", "trades")
        kind = "quote" if trigger == "bbo" else "ticker"
        return Topic(kind, symbol, f"ticker:{trigger}:{symbol}")

    def result(self, channel: str, symbol: str, params: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {"channel": channel}
        if channel == "ohlc":
            result |= {"interval": self.minutes, "snapshot": True, "symbol": symbol}
            result["warnings"] = ["timestamp is deprecated, use interval_begin"]
        elif channel == "ticker":
            trigger = params.get("event_trigger", "trades")
            result |= {"event_trigger": trigger, "snapshot": True, "symbol": symbol}
        else:
            result |= {"snapshot": True, "symbol": symbol}
        return result

    async def send_snapshot(self, conn: Connection, topic: Topic) -> None:
        spec = self.fake.specs[topic.symbol]
        now = self.fake.now_ns()
        if topic.kind == "kline":
            step = self.fake.step_ns
            start = self.fake.open_of(now) - (OHLC_SNAPSHOT - 1) * step
            rows = self.fake.history(topic.symbol, start_ns=start, limit=OHLC_SNAPSHOT)
            data = [self.candle_obj(spec, c) for c in rows]
            frame = {"channel": "ohlc", "type": "snapshot", "timestamp": iso(now, 9), "data": data}
        elif topic.kind == "trade":
            prints = recent_updates(self.fake, topic.symbol, TRADE_SNAPSHOT)
            frame = {
                "channel": "trade",
                "type": "snapshot",
                "data": [self.trade_obj(spec, u) for u in prints],
            }
        else:
            frame = {
                "channel": "ticker",
                "type": "snapshot",
                "data": [self.ticker_obj(spec, self.fake.snapshot(topic.symbol))],
            }
        await conn.send_json(frame)

    def candle_obj(self, spec: SymbolSpec, c: Candle) -> dict[str, Any]:
        tick = spec.tick_size
        return {
            "symbol": spec.symbol,
            "open": number(c.open, tick),
            "high": number(c.high, tick),
            "low": number(c.low, tick),
            "close": number(c.close, tick),
            "trades": c.trades,
            "volume": number(c.volume, spec.lot_size),
            "vwap": number(snap((c.open + c.high + c.low + c.close) / 4, tick), tick),
            "interval_begin": iso(c.open_ns, 9),
            "interval": self.minutes,
            "timestamp": iso(c.open_ns + self.fake.step_ns),
        }

    def trade_obj(self, spec: SymbolSpec, u: Update) -> dict[str, Any]:
        return {
            "symbol": spec.symbol,
            "side": "sell" if u.trade.buyer_maker else "buy",
            "price": number(u.trade.price, spec.tick_size),
            "qty": number(u.trade.qty, spec.lot_size),
            "ord_type": "market",
            "trade_id": u.trade.id,
            "timestamp": iso(u.trade.ts_ns),
        }

    def ticker_obj(self, spec: SymbolSpec, u: Update) -> dict[str, Any]:
        tick, c = spec.tick_size, u.candle
        change = number(c.close - c.open, tick)
        return {
            "symbol": spec.symbol,
            "bid": number(u.bid, tick),
            "bid_qty": number(u.bid_qty, spec.lot_size),
            "ask": number(u.ask, tick),
            "ask_qty": number(u.ask_qty, spec.lot_size),
            "last": number(u.trade.price, tick),
            "volume": number(c.volume, spec.lot_size),
            "vwap": number(snap((c.high + c.low + c.close) / 3, tick), tick),
            "low": number(c.low, tick),
            "high": number(c.high, tick),
            "change": change,
            "change_pct": round(100 * change / c.open, 2) if c.open else 0.0,
            "trades": c.trades,
            "timestamp": iso(u.ts_ns),
        }

    def format(self, topic: Topic, update: Update) -> str | None:
        spec = self.fake.specs.get(topic.symbol)
        if spec is None:
            return None
        if topic.kind == "kline":
            frame: dict[str, Any] = {
                "channel": "ohlc",
                "type": "update",
                "timestamp": iso(update.ts_ns, 9),
                "data": [self.candle_obj(spec, update.candle)],
            }
        elif topic.kind == "trade":
            frame = {"channel": "trade", "type": "update", "data": [self.trade_obj(spec, update)]}
        else:
            frame = {"channel": "ticker", "type": "update", "data": [self.ticker_obj(spec, update)]}
        return msgspec.json.encode(frame).decode()

    def malformed(self, topic: Topic, update: Update) -> str:
        """Right channel, symbol and candle, wrong-typed values: ccxt passes them on as
        None (a frame its parser chokes on would stop ccxt's receive loop instead)."""
        if topic.kind == "kline":
            data = {
                "symbol": topic.symbol,
                "open": "n/a",
                "high": None,
                "low": "n/a",
                "close": None,
                "volume": "n/a",
                "interval_begin": iso(update.candle.open_ns, 9),
                "interval": self.minutes,
            }
            frame = {"channel": "ohlc", "type": "update", "data": [data]}
        elif topic.kind == "trade":
            data = {
                "symbol": topic.symbol,
                "side": "sideways",
                "price": None,
                "qty": None,
                "trade_id": None,
                "timestamp": "not a time",
            }
            frame = {"channel": "trade", "type": "update", "data": [data]}
        else:
            data = {"symbol": topic.symbol, "bid": None, "ask": None, "last": None}
            frame = {"channel": "ticker", "type": "update", "data": [data]}
        return msgspec.json.encode(frame).decode()

    def urls(self, http_url: str, ws_url: str) -> dict[str, Any]:
        v1 = f"{ws_url}/v1"
        private = f"{ws_url}{PRIVATE_WS}"
        return {
            "api": {
                "public": http_url,
                "private": http_url,
                "zendesk": f"{http_url}/zendesk",
                "ws": {
                    "public": v1,
                    "private": private.removesuffix("/v2"),
                    "beta": v1,
                    "beta-private": v1,
                    "publicV2": f"{ws_url}/v2",
                    "privateV2": private,
                },
            }
        }

    def options(self) -> dict[str, Any]:
        return {"adjustForTimeDifference": False}


def recent_updates(fake: FakeExchange, symbol: str, count: int) -> list[Update]:
    """The last ``count`` trade-carrying ticks up to now, oldest first: exactly the prints
    the live stream sent (or would have), none in a gap minute."""
    tick = fake.step_ns // fake.updates_per_bar
    ts = fake.now_ns() // tick * tick
    out: list[Update] = []
    floor = ts - (count + 4 * fake.updates_per_bar * (1 + len(fake.faults.gaps))) * tick
    while len(out) < count and ts > floor:
        if fake.open_of(ts) not in fake.faults.gaps:
            out.append(fake.snapshot(symbol, ts))
        ts -= tick
    out.reverse()
    return out
