"""Binance's wire protocol on the fake core: spot (``binance``) and USDT-M perpetuals
(``binanceusdm``).

REST under the real paths (``/api/v3/...`` spot, ``/fapi/v1/...`` futures, ``/sapi/v1/system/
status``), websocket on ``/ws``, ``/stream`` and the futures' ``/market/ws`` and ``/public/ws``
(ccxt rewrites a linear ``.../ws`` URL to those), each optionally followed by ``/<stream>``
names. Frames follow the recorded ones (``../shared/reference/ccxt-fixtures/*-binance.json``):
spot writes prices with 8 decimals, futures with the tick's; spot ``bookTicker`` carries no
event type; a ``/stream`` connection gets the combined ``{"stream", "data"}`` envelope.
A delisted symbol's status turns ``BREAK`` (spot) or ``SETTLING`` (futures): ccxt marks it
inactive. USDT-M lists no contract size (ccxt takes 1), so ``SymbolSpec.contract_size`` is
not served here.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from tests.fakes.binance_frames import MS, BinanceFrames, market_id, ms
from tests.fakes.core import NS, Connection, FakeExchange, SymbolSpec, Topic, TopicKind, Update, fmt

WS_PREFIXES = ("", "/market", "/public")
STREAM_KINDS: dict[str, TopicKind] = {
    "trade": "trade",
    "aggTrade": "trade",
    "bookTicker": "quote",
    "ticker": "ticker",
    "miniTicker": "ticker",
}
ERRORS: dict[int, tuple[int, str]] = {
    400: (-1121, "Invalid symbol."),
    418: (-1003, "Way too many requests; IP(127.0.0.1) banned. Please use the websocket."),
    429: (
        -1003,
        "Too many requests; current limit of IP(127.0.0.1) is 6000 requests per minute. "
        "Please use the websocket for live updates to avoid polling the API.",
    ),
}
GATEWAY_PAGE = "<html><head><title>{0}</title></head><body><h1>{0}</h1></body></html>"
REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(value), status=status, content_type="application/json"
    )


def _fail(code: int, msg: str, status: int = 400) -> web.Response:
    return _json({"code": code, "msg": msg}, status)


class BinanceSkin:
    exchange_ids = ("binance", "binanceusdm")
    ws_paths = tuple(
        f"{prefix}/{kind}{tail}"
        for prefix in WS_PREFIXES
        for kind in ("ws", "stream")
        for tail in ("", "/{tail:.*}")
    )

    def __init__(self, fake: FakeExchange, exchange_id: str) -> None:
        self.fake = fake
        self.exchange_id = exchange_id
        self.ping_every_s = 180.0 if exchange_id == "binanceusdm" else 20.0
        self.frames = BinanceFrames(fake)
        self._by_id: dict[tuple[bool, str], SymbolSpec] = {}
        self._version = -1

    @property
    def by_id(self) -> dict[tuple[bool, str], SymbolSpec]:
        """Markets by (futures, Binance id), rebuilt when the fake's table changes."""
        if self._version != self.fake.specs.version:
            specs = self.fake.specs.values()
            self._by_id = {(s.kind == "perpetual", market_id(s)): s for s in specs}
            self._version = self.fake.specs.version
        return self._by_id

    # -- ccxt configuration ----------------------------------------------------------------

    def urls(self, http_url: str, ws_url: str) -> dict[str, Any]:
        api = {
            "public": f"{http_url}/api/v3",
            "private": f"{http_url}/api/v3",
            "v1": f"{http_url}/api/v1",
            "sapi": f"{http_url}/sapi/v1",
            "fapiPublic": f"{http_url}/fapi/v1",
            "fapiPublicV2": f"{http_url}/fapi/v2",
            "fapiPublicV3": f"{http_url}/fapi/v3",
            "fapiPrivate": f"{http_url}/fapi/v1",
            "fapiPrivateV2": f"{http_url}/fapi/v2",
            "fapiPrivateV3": f"{http_url}/fapi/v3",
            "fapiData": f"{http_url}/futures/data",
            "ws": {"spot": f"{ws_url}/ws", "margin": f"{ws_url}/ws", "linear": f"{ws_url}/ws"},
        }
        return {"api": api}

    def options(self) -> dict[str, Any]:
        kinds = {spec.kind for spec in self.fake.specs.values()}
        if not kinds:
            kinds = {"perpetual" if self.exchange_id == "binanceusdm" else "spot"}
        types = [t for k, t in (("spot", "spot"), ("perpetual", "linear")) if k in kinds]
        return {"fetchMarkets": {"types": types}, "fetchCurrencies": False, "fetchMargins": False}

    def error(self, status: int) -> web.Response:
        if status >= 500:
            reason = REASONS.get(status, "Server Error")
            page = GATEWAY_PAGE.format(f"{status} {reason}")
            return web.Response(text=page, status=status, content_type="text/html")
        code, msg = ERRORS.get(status, (-1000, "An unknown error occurred while processing."))
        response = _fail(code, msg, status)
        if status in (418, 429):
            response.headers["Retry-After"] = "1"
        return response

    # -- REST ------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        out = [web.get("/sapi/v1/system/status", self.system_status)]
        for prefix, futures in (("/api/v3", False), ("/fapi/v1", True)):
            out += [
                web.get(f"{prefix}/ping", self.ping),
                web.get(f"{prefix}/time", self.time),
                web.get(f"{prefix}/exchangeInfo", self._with(self.exchange_info, futures)),
                web.get(f"{prefix}/klines", self._with(self.klines, futures)),
                web.get(f"{prefix}/ticker/24hr", self._with(self.ticker_24hr, futures)),
                web.get(f"{prefix}/ticker/bookTicker", self._with(self.book_ticker, futures)),
            ]
        out += [
            web.get("/fapi/v1/premiumIndex", self.premium_index),
            web.get("/fapi/v1/fundingRate", self.funding_history),
        ]
        return out

    def _with(self, handler: Any, futures: bool) -> Any:
        async def bound(request: web.Request) -> web.Response:
            return await handler(request, futures)

        return bound

    async def ping(self, request: web.Request) -> web.Response:
        return _json({})

    async def time(self, request: web.Request) -> web.Response:
        return _json({"serverTime": ms(self.fake.now_ns())})

    async def system_status(self, request: web.Request) -> web.Response:
        return _json({"status": 0, "msg": "normal"})

    def _spec(self, request: web.Request, futures: bool) -> SymbolSpec | None:
        return self.by_id.get((futures, request.query.get("symbol", "")))

    def _specs(self, request: web.Request, futures: bool) -> list[SymbolSpec] | None:
        """The ``symbol`` or ``symbols`` named (None: one is unknown), else every market."""
        if "symbol" in request.query:
            spec = self._spec(request, futures)
            return None if spec is None else [spec]
        if "symbols" in request.query:
            try:
                ids = msgspec.json.decode(request.query["symbols"], type=list[str])
            except msgspec.DecodeError:
                return None
            found = [self.by_id.get((futures, i)) for i in ids]
            return None if None in found else [s for s in found if s is not None]
        return [spec for (fut, _), spec in self.by_id.items() if fut == futures]

    async def exchange_info(self, request: web.Request, futures: bool) -> web.Response:
        symbols = [
            self.frames.symbol_info(spec, futures)
            for (fut, _), spec in self.by_id.items()
            if fut == futures
        ]
        limits = [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
             "limit": 6000},
        ]  # fmt: skip
        body: dict[str, Any] = {
            "timezone": "UTC",
            "serverTime": ms(self.fake.now_ns()),
            "rateLimits": limits,
            "exchangeFilters": [],
            "symbols": symbols,
        }
        if futures:
            body["assets"] = [{"asset": "USDT", "marginAvailable": True}]
        return _json(body)

    async def klines(self, request: web.Request, futures: bool) -> web.Response:
        spec = self._spec(request, futures)
        if spec is None:
            return _fail(-1121, "Invalid symbol.")
        if request.query.get("interval") != self.fake.interval:
            return _fail(-1120, "Invalid interval.")
        try:
            limit = int(request.query.get("limit", "500"))
            start = request.query.get("startTime")
            end = request.query.get("endTime")
            start_ns = int(start) * MS if start else None
            end_ns = int(end) * MS if end else None
        except ValueError:
            return _fail(-1100, "Illegal characters found in a parameter.")
        if not 1 <= limit <= (1500 if futures else 1000):
            return _fail(-1130, "Invalid data sent for a parameter.")
        rows = [
            self.frames.kline_row(spec, candle, futures)
            for candle in self.fake.history(spec.symbol, start_ns, end_ns, limit)
        ]
        return _json(rows)

    async def ticker_24hr(self, request: web.Request, futures: bool) -> web.Response:
        specs = self._specs(request, futures)
        if specs is None:
            return _fail(-1121, "Invalid symbol.")
        rows = [
            self.frames.ticker(spec, self.fake.snapshot(spec.symbol), futures) for spec in specs
        ]
        return _json(rows[0] if "symbol" in request.query else rows)

    async def book_ticker(self, request: web.Request, futures: bool) -> web.Response:
        specs = self._specs(request, futures)
        if specs is None:
            return _fail(-1121, "Invalid symbol.")
        rows = []
        for spec in specs:
            update = self.fake.snapshot(spec.symbol)
            p, q = self.frames.formats(spec, futures)
            row = {
                "symbol": market_id(spec),
                "bidPrice": p(update.bid),
                "bidQty": q(update.bid_qty),
                "askPrice": p(update.ask),
                "askQty": q(update.ask_qty),
            }
            if futures:
                row["time"] = ms(update.ts_ns)
            rows.append(row)
        return _json(rows[0] if "symbol" in request.query else rows)

    async def premium_index(self, request: web.Request) -> web.Response:
        specs = self._specs(request, True)
        if specs is None:
            return _fail(-1121, "Invalid symbol.")
        rows = []
        for spec in specs:
            funding = self.fake.funding(spec.symbol)
            p, _ = self.frames.formats(spec, True)
            rows.append(
                {
                    "symbol": market_id(spec),
                    "markPrice": p(funding.mark),
                    "indexPrice": p(funding.index),
                    "estimatedSettlePrice": p(funding.mark),
                    "lastFundingRate": f"{funding.rate:.8f}",
                    "interestRate": "0.00010000",
                    "nextFundingTime": ms(funding.next_ns),
                    "time": ms(funding.ts_ns),
                }
            )
        return _json(rows[0] if "symbol" in request.query else rows)

    async def funding_history(self, request: web.Request) -> web.Response:
        spec = self._spec(request, True)
        if spec is None:
            return _fail(-1121, "Invalid symbol.")
        period = 8 * 3600 * NS
        now = self.fake.now_ns()
        end = int(request.query.get("endTime", now // MS)) * MS
        limit = min(int(request.query.get("limit", "100")), 1000)
        start_q = request.query.get("startTime")
        first = -(-int(start_q) * MS // period) * period if start_q else end - limit * period
        rows = []
        at = max(first, 0) - max(first, 0) % period
        while at <= min(end, now) and len(rows) < limit:
            if at >= first:
                funding = self.fake.funding(spec.symbol, at - 1)
                rows.append(
                    {
                        "symbol": market_id(spec),
                        "fundingTime": ms(at),
                        "fundingRate": f"{funding.rate:.8f}",
                        "markPrice": fmt(funding.mark, spec.tick_size, 8),
                    }
                )
            at += period
        return _json(rows)

    # -- websocket -------------------------------------------------------------------------

    def _topic(self, name: str, futures: bool, wrapped: bool) -> Topic | None:
        """The topic a stream name stands for (``btcusdt@kline_1m``), None if unknown."""
        market, _, channel = name.partition("@")
        spec = self.by_id.get((futures, market.upper()))
        if spec is None:
            return None
        if channel.startswith("kline_"):
            if channel != f"kline_{self.fake.interval}":
                return None
            return Topic("kline", spec.symbol, name, wrapped)
        kind = STREAM_KINDS.get(channel)
        return None if kind is None else Topic(kind, spec.symbol, name, wrapped)

    def _conn_topics(self, conn: Connection, names: list[Any]) -> list[Topic]:
        futures = conn.state["futures"]
        topics = [self._topic(str(n), futures, conn.state["wrapped"]) for n in names]
        return [t for t in topics if t is not None]

    async def on_open(self, conn: Connection) -> None:
        path = conn.path
        conn.state["futures"] = self.exchange_id == "binanceusdm"
        conn.state["wrapped"] = "/stream" in path
        names = [part for part in path.split("/")[2:] if "@" in part]
        names += [n for n in conn.request.query.get("streams", "").split("/") if n]
        conn.subscribe(self._conn_topics(conn, names))

    async def on_message(self, conn: Connection, text: str) -> None:
        try:
            request = msgspec.json.decode(text)
        except msgspec.DecodeError:
            await conn.send_json({"error": {"code": 3, "msg": "Invalid JSON"}})
            return
        if not isinstance(request, dict):
            await conn.send_json({"error": {"code": 3, "msg": "Invalid JSON"}})
            return
        ident = request.get("id")
        method = request.get("method")
        params = request.get("params") or []
        if method == "SUBSCRIBE":
            conn.subscribe(self._conn_topics(conn, params))
            await conn.send_json({"result": None, "id": ident})
        elif method == "UNSUBSCRIBE":
            names = set(map(str, params))
            conn.unsubscribe([t for t in conn.topics if t.name in names])
            await conn.send_json({"result": None, "id": ident})
        elif method == "LIST_SUBSCRIPTIONS":
            await conn.send_json({"result": sorted(t.name for t in conn.topics), "id": ident})
        elif method in ("SET_PROPERTY", "GET_PROPERTY"):
            await conn.send_json(
                {"result": None if method == "SET_PROPERTY" else False, "id": ident}
            )
        else:
            await conn.send_json(
                {"error": {"code": 2, "msg": f"Invalid request: unknown method {method!r}"},
                 "id": ident}
            )  # fmt: skip

    def format(self, topic: Topic, update: Update) -> str | None:
        spec = self.fake.specs[topic.symbol]
        futures = spec.kind == "perpetual"
        if topic.kind == "kline":
            data = self.frames.kline_event(spec, update, futures)
        elif topic.kind == "trade":
            data = self.frames.trade_event(spec, update, futures, topic.name.endswith("@aggTrade"))
        elif topic.kind == "quote":
            data = self.frames.book_event(spec, update, futures)
        else:
            data = self.frames.ticker_event(
                spec, update, futures, topic.name.endswith("@miniTicker")
            )
        if topic.wrapped:
            return msgspec.json.encode({"stream": topic.name, "data": data}).decode()
        return msgspec.json.encode(data).decode()

    def malformed(self, topic: Topic, update: Update) -> str:
        """Valid JSON with wrong-typed values, the way a broken relay garbles a frame: ccxt
        parses it and hands the caller ``None`` prices."""
        spec = self.fake.specs[topic.symbol]
        futures = spec.kind == "perpetual"
        if topic.kind == "kline":
            data = self.frames.kline_event(spec, update, futures)
            data["k"] |= {"o": "not-a-number", "h": None, "c": [], "v": {}}
        elif topic.kind == "trade":
            data = self.frames.trade_event(spec, update, futures, topic.name.endswith("@aggTrade"))
            data |= {"p": "not-a-number", "q": None}
        elif topic.kind == "quote":
            data = self.frames.book_event(spec, update, futures) | {"b": "NaN?", "a": None}
        else:
            data = self.frames.ticker_event(spec, update, futures, True) | {"c": None}
        if topic.wrapped:
            return msgspec.json.encode({"stream": topic.name, "data": data}).decode()
        return msgspec.json.encode(data).decode()
