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

import asyncio
import itertools
from typing import Any

import msgspec
from aiohttp import web

from tests.fakes.binance_frames import MS, BinanceFrames, algo_status, market_id, ms
from tests.fakes.binance_orders import BinanceError, BinanceOrders, check_timestamp, verify
from tests.fakes.core import NS, Connection, FakeExchange, SymbolSpec, Topic, TopicKind, Update, fmt
from tests.fakes.matching import FakeFill, FakeOrder

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
    ws_paths = (
        *(
            f"{prefix}/{kind}{tail}"
            for prefix in WS_PREFIXES
            for kind in ("ws", "stream")
            for tail in ("", "/{tail:.*}")
        ),
        "/ws-api/v3",
        "/private/ws",
    )

    def __init__(self, fake: FakeExchange, exchange_id: str) -> None:
        self.fake = fake
        self.exchange_id = exchange_id
        self.ping_every_s = 180.0 if exchange_id == "binanceusdm" else 20.0
        self.frames = BinanceFrames(fake)
        self.orders = BinanceOrders(fake)
        self.users = UserStreams(fake, self.orders)
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
            "ws": {
                "spot": f"{ws_url}/ws",
                "margin": f"{ws_url}/ws",
                "linear": f"{ws_url}/ws",
                "ws-api": {"spot": f"{ws_url}/ws-api/v3"},
            },
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
        return out + self.orders.routes()

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
        if path.startswith(("/ws-api", "/private")):
            await self.users.on_open(conn)
            return
        conn.state["futures"] = self.exchange_id == "binanceusdm"
        conn.state["wrapped"] = "/stream" in path
        names = [part for part in path.split("/")[2:] if "@" in part]
        names += [n for n in conn.request.query.get("streams", "").split("/") if n]
        conn.subscribe(self._conn_topics(conn, names))

    async def on_message(self, conn: Connection, text: str) -> None:
        if conn.path.startswith(("/ws-api", "/private")):
            await self.users.on_message(conn, text)
            return
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


class UserStreams:
    """Binance's user data stream as ccxt.pro 4.5 uses it: spot through the WebSocket API
    (``userDataStream.subscribe.signature`` on ``/ws-api/v3``, each event wrapped in
    ``{"subscriptionId", "event"}``), USDT-M through a listen key
    (``/private/ws?listenKey=...``, bare events). Frames come from the account's updates:
    ``executionReport`` + ``outboundAccountPosition`` (spot); ``ORDER_TRADE_UPDATE``,
    ``ALGO_UPDATE`` (conditional orders) and ``ACCOUNT_UPDATE`` on fills (USDT-M)."""

    def __init__(self, fake: FakeExchange, orders: BinanceOrders) -> None:
        self.fake = fake
        self.orders = orders
        self.frames = orders.frames
        self.spot: dict[Connection, int] = {}
        self.futures: set[Connection] = set()
        self._ids = itertools.count()
        self._seen: dict[int, tuple[Any, ...]] = {}
        self._sending: set[asyncio.Task[None]] = set()
        fake.account.on_update(self.on_update)

    async def on_open(self, conn: Connection) -> None:
        if conn.path.startswith("/private"):
            key = conn.request.query.get("listenKey", "")
            if key not in self.orders.listen_keys:
                await conn.ws.close(code=1008, message=b"invalid listenKey")
                return
            self.futures.add(conn)

    async def on_message(self, conn: Connection, text: str) -> None:
        if conn.path.startswith("/private"):
            return
        try:
            request = msgspec.json.decode(text)
            ident, method = request.get("id"), request.get("method")
            params = {k: str(v).lower() if isinstance(v, bool) else str(v)
                      for k, v in (request.get("params") or {}).items()}  # fmt: skip
        except (msgspec.DecodeError, AttributeError):
            await conn.send_json({"id": None, "status": 400,
                                  "error": {"code": -1100, "msg": "Invalid JSON"}})  # fmt: skip
            return
        limits = [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                   "limit": 6000, "count": 2}]  # fmt: skip
        try:
            result = self._ws_api(conn, str(method), params)
        except BinanceError as error:
            status = 401 if error.code == -1022 else 400
            await conn.send_json({"id": ident, "status": status,
                                  "error": {"code": error.code, "msg": error.msg},
                                  "rateLimits": limits})  # fmt: skip
            return
        await conn.send_json({"id": ident, "status": 200, "result": result, "rateLimits": limits})

    def _ws_api(self, conn: Connection, method: str, params: dict[str, str]) -> dict[str, Any]:
        if method == "userDataStream.subscribe.signature":
            signature = params.pop("signature", "")
            if not params.get("apiKey") or not signature:
                raise BinanceError(-1102, "Mandatory parameter 'signature' was not sent.")
            payload = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
            if not verify(self.fake.api_secret, payload, signature):
                raise BinanceError(-1022, "Signature for this request is not valid.")
            check_timestamp(params)
            self.spot[conn] = self.spot.get(conn, next(self._ids))
            return {"subscriptionId": self.spot[conn]}
        if method == "userDataStream.unsubscribe":
            self.spot.pop(conn, None)
            return {}
        if method == "ping":
            return {}
        raise BinanceError(-1000, f"Unsupported method {method!r}.")

    # -- frames ----------------------------------------------------------------------------

    def _execution(self, order: FakeOrder, fill: FakeFill | None) -> str | None:
        """The execution type of this change (None: nothing a stream shows)."""
        shape = (order.status, order.qty, order.price, order.stop_price, order.triggered)
        before = self._seen.get(order.order_id)
        self._seen[order.order_id] = shape
        if fill is not None:
            return "TRADE"
        if order.status in ("canceled", "expired", "rejected"):
            return None if before and before[0] == order.status else order.status.upper()
        if before is None:
            return "NEW"
        if before[1:4] != shape[1:4]:
            return "AMENDMENT"
        return "NEW" if order.triggered and not before[4] else None

    def on_update(self, order: FakeOrder, fill: FakeFill | None) -> None:
        spec = self.fake.specs.get(order.symbol)
        if spec is None:
            return
        algo_before = self._seen.get(-order.order_id)
        execution = self._execution(order, fill)
        if spec.kind == "spot":
            if execution is None or (execution == "NEW" and order.triggered):
                return
            events = [self.frames.execution_report(order, fill, execution)]
            events.append(self._spot_balances(spec, order.updated_ns))
            for conn, sid in list(self.spot.items()):
                for event in events:
                    self._send(conn, {"subscriptionId": sid, "event": event})
            return
        events = []
        if execution is not None and (not order.algo or order.triggered):
            events.append(self.frames.order_trade_update(order, fill, execution))
        if order.algo:  # the algo's own update: before its order's, but FINISHED after
            status = algo_status(order)
            self._seen[-order.order_id] = (status,)
            if algo_before != (status,):
                events.insert(
                    len(events) if status == "FINISHED" else 0, self.frames.algo_update(order)
                )
        if fill is not None:
            events.append(self._futures_account(spec, fill))
        for conn in list(self.futures):
            for event in events:
                self._send(conn, event)

    def _spot_balances(self, spec: SymbolSpec, ts_ns: int) -> dict[str, Any]:
        rows = []
        for asset in (spec.base, spec.quote):
            balance = self.fake.account.balances.get(asset)
            if balance is not None:
                rows.append(
                    {"a": asset, "f": fmt(balance.free, 1e-8), "l": fmt(balance.used, 1e-8)}
                )
        return {"e": "outboundAccountPosition", "E": ms(ts_ns), "u": ms(ts_ns), "B": rows}

    def _futures_account(self, spec: SymbolSpec, fill: FakeFill) -> dict[str, Any]:
        account = self.fake.account
        asset = spec.settle or spec.quote
        balance = account.balances.get(asset)
        wallet = 0.0 if balance is None else balance.free + balance.used
        position = account.positions.get(spec.symbol)
        _, p, q = self.frames.formats_of(spec.symbol, True)
        qty, entry = (0.0, 0.0) if position is None else (position.qty, position.entry_price)
        mark = self.fake.snapshot(spec.symbol).trade.price
        at = ms(fill.ts_ns)
        return {
            "e": "ACCOUNT_UPDATE", "E": at, "T": at,
            "a": {
                "m": "ORDER",
                "B": [{"a": asset, "wb": fmt(wallet, 1e-8), "cw": fmt(wallet, 1e-8), "bc": "0"}],
                "P": [{"s": market_id(spec), "pa": q(qty) if qty else "0", "ep": p(entry),
                       "bep": p(entry), "cr": "0",
                       "up": fmt((mark - entry) * qty, 1e-8), "mt": "cross", "iw": "0",
                       "ps": "BOTH", "ma": asset}],
            },
        }  # fmt: skip

    def _send(self, conn: Connection, event: Any) -> None:
        """Queue one frame; tasks start in creation order, so frames keep theirs."""
        if conn.ws.closed:
            self.spot.pop(conn, None)
            self.futures.discard(conn)
            return
        task = asyncio.get_running_loop().create_task(conn.send_json(event))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
