"""The Bybit skin of the exchange fakes: v5 spot and linear (USDT) perpetuals.

Only what ccxt's ``bybit`` calls for market data, in Bybit's wire format (the reference is the
ccxt static fixtures ``ws-bybit.json`` / ``response-bybit.json`` and the v5 API docs):

- REST, every answer in the ``{"retCode", "retMsg", "result", "retExtInfo", "time"}``
  envelope: ``/v5/market/time``, ``/v5/market/instruments-info`` (spot unpaged; linear paged
  by ``nextPageCursor``; only ``Trading`` symbols unless ``status`` asks for others: a
  delisted symbol is absent, or ``Closed`` with ``status=Closed``), ``/v5/market/kline``
  (newest first, string arrays; ``start`` means the candle containing it and the ``limit``
  candles after, else the last ``limit`` up to ``end``), ``/v5/market/tickers`` (funding
  rates of perpetuals come from here too).
- Websocket ``/v5/public/spot`` and ``/v5/public/linear``: ``{"op": "subscribe", "args":
  [...]}`` with topics ``kline.<interval>.<id>`` (``confirm`` true on the closed candle's
  final frame), ``publicTrade.<id>``, ``orderbook.1.<id>`` and ``tickers.<id>``; spot takes
  at most 10 args per request; ``{"op": "ping"}`` is answered in each channel's own pong.
- The private side (signed REST, orders, the ``/v5/private`` websocket) is
  ``bybit_orders.py`` and ``bybit_stream.py``.
- Faults: a ``429`` is Bybit's API rate limit (HTTP 200, ``retCode`` 10006 "Too many
  visits!"), a ``403`` its IP limit ("access too frequent"), a 5xx the edge's HTML page.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import msgspec
from aiohttp import web

from tests.fakes.bybit_orders import BybitPrivate
from tests.fakes.core import (
    NS,
    Connection,
    FakeExchange,
    SymbolSpec,
    Topic,
    TopicKind,
    Update,
    decimals,
)

MS = 1_000_000
INTERVAL_IDS = {"d": "D", "w": "W"}
SPOT, LINEAR = "spot", "linear"
WS_PATHS = {"/v5/public/spot": SPOT, "/v5/public/linear": LINEAR}
PRIVATE_WS = "/v5/private"
SPOT_ARGS_MAX = 10
LINEAR_PAGE_DEFAULT, PAGE_MAX = 500, 1000
KLINE_LIMIT_DEFAULT, KLINE_LIMIT_MAX = 200, 1000
ORDERBOOK_DEPTHS = {SPOT: ("1", "50", "200"), LINEAR: ("1", "50", "200", "500")}
TRADE_ID_SPACE = uuid.UUID("6f0b5c1e-7d2a-4c61-9a55-1b7e2f3c4d5e")
ERROR_PAGE = (
    "<html><head><title>{code}</title></head><body><center><h1>{code}</h1></center></body></html>"
)


def interval_id(interval: str) -> str:
    """Bybit's name for a ccxt timeframe: ``1m`` -> ``1``, ``1h`` -> ``60``, ``1d`` -> ``D``."""
    count, unit = int(interval[:-1]), interval[-1]
    if unit == "m":
        return str(count)
    if unit == "h":
        return str(count * 60)
    if unit in INTERVAL_IDS and count == 1:
        return INTERVAL_IDS[unit]
    raise ValueError(f"Bybit has no {interval} interval")


def category_of(spec: SymbolSpec) -> str:
    return SPOT if spec.kind == "spot" else LINEAR


def market_id(spec: SymbolSpec) -> str:
    return f"{spec.base}{spec.quote}"


def price_text(value: float, spec: SymbolSpec) -> str:
    return f"{value:.{decimals(spec.tick_size)}f}"


def qty_text(value: float, spec: SymbolSpec) -> str:
    return f"{value:.{decimals(spec.lot_size)}f}"


def step_text(step: float) -> str:
    return f"{step:.{decimals(step)}f}"


def envelope(result: Any, now_ns: int, code: int = 0, message: str = "OK") -> dict[str, Any]:
    return {
        "retCode": code,
        "retMsg": message,
        "result": result,
        "retExtInfo": {},
        "time": now_ns // MS,
    }


def spot_instrument(spec: SymbolSpec, status: str) -> dict[str, Any]:
    return {
        "symbol": market_id(spec),
        "baseCoin": spec.base,
        "quoteCoin": spec.quote,
        "innovation": "0",
        "status": status,
        "marginTrading": "utaOnly",
        "stTag": "0",
        "lotSizeFilter": {
            "basePrecision": step_text(spec.lot_size),
            "quotePrecision": "0.00000001",
            "minOrderQty": step_text(spec.lot_size),
            "maxOrderQty": qty_text(spec.lot_size * 1_000_000, spec),
            "minOrderAmt": f"{spec.min_notional:g}",
            "maxOrderAmt": "2000000",
        },
        "priceFilter": {"tickSize": step_text(spec.tick_size)},
        "riskParameters": {"priceLimitRatioX": "0.005", "priceLimitRatioY": "0.01"},
    }


def linear_instrument(spec: SymbolSpec, status: str) -> dict[str, Any]:
    max_qty = qty_text(spec.lot_size * 1_000_000, spec)
    return {
        "symbol": market_id(spec),
        "contractType": "LinearPerpetual",
        "status": status,
        "baseCoin": spec.base,
        "quoteCoin": spec.quote,
        "launchTime": "1585526400000",
        "deliveryTime": "0",
        "deliveryFeeRate": "",
        "priceScale": str(decimals(spec.tick_size)),
        "leverageFilter": {"minLeverage": "1", "maxLeverage": "100.00", "leverageStep": "0.01"},
        "priceFilter": {
            "minPrice": step_text(spec.tick_size),
            "maxPrice": price_text(spec.price * 20, spec),
            "tickSize": step_text(spec.tick_size),
        },
        "lotSizeFilter": {
            "maxOrderQty": max_qty,
            "minOrderQty": step_text(spec.lot_size),
            "qtyStep": step_text(spec.lot_size),
            "postOnlyMaxOrderQty": max_qty,
            "maxMktOrderQty": qty_text(spec.lot_size * 100_000, spec),
            "minNotionalValue": f"{spec.min_notional:g}",
        },
        "unifiedMarginTrade": True,
        "fundingInterval": 480,
        "settleCoin": spec.settle or spec.quote,
        "copyTrading": "both",
        "upperFundingRate": "0.005",
        "lowerFundingRate": "-0.005",
        "isPreListing": False,
        "preListingInfo": None,
        "riskParameters": {"priceLimitRatioX": "0.01", "priceLimitRatioY": "0.02"},
        "displayName": "",
    }


def kline_row(spec: SymbolSpec, candle: Any) -> list[str]:
    """``[startTime, open, high, low, close, volume, turnover]``, all strings."""
    return [
        str(candle.open_ns // MS),
        price_text(candle.open, spec),
        price_text(candle.high, spec),
        price_text(candle.low, spec),
        price_text(candle.close, spec),
        qty_text(candle.volume, spec),
        f"{turnover(candle):.4f}",
    ]


def turnover(candle: Any) -> float:
    return candle.volume * (candle.open + candle.high + candle.low + candle.close) / 4


class BybitSkin:
    """Bybit v5 for ``FakeExchange`` (the protocol in ``core``'s module docstring)."""

    exchange_ids = ("bybit",)
    ws_paths = (*WS_PATHS, PRIVATE_WS)

    def __init__(self, fake: FakeExchange, exchange_id: str) -> None:
        self.fake = fake
        self.interval = interval_id(fake.interval)
        self.page_size_cap = PAGE_MAX
        """Tests lower it to make ``instruments-info`` page by ``nextPageCursor``."""
        self.connections_opened = 0
        self._malformed = itertools.count()
        self._index: dict[tuple[str, str], str] = {}
        self.private = BybitPrivate(self)

    # -- symbols ---------------------------------------------------------------------------

    def _specs(self, category: str) -> list[SymbolSpec]:
        return [s for s in self.fake.specs.values() if category_of(s) == category]

    def _spec(self, category: str, symbol_id: str) -> SymbolSpec | None:
        """The market by Bybit id; ``fake.specs`` is read live (a test may add a market or
        change a tick size at any time)."""
        key = (category, symbol_id)
        if len(self._index) != len(self.fake.specs) or key not in self._index:
            self._index = {
                (category_of(s), market_id(s)): s.symbol for s in self.fake.specs.values()
            }
        spec = self.fake.specs.get(self._index.get(key, ""))
        return spec if spec is not None and (category_of(spec), market_id(spec)) == key else None

    def _listed(self, category: str, symbol_id: str) -> SymbolSpec | None:
        spec = self._spec(category, symbol_id)
        return None if spec is None or self.fake.is_delisted(spec.symbol) else spec

    # -- REST ------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v5/market/time", self._time),
            web.get("/v5/market/instruments-info", self._instruments),
            web.get("/v5/market/kline", self._kline),
            web.get("/v5/market/tickers", self._tickers),
            *self.private.routes(),
        ]

    def _answer(self, result: Any, code: int = 0, message: str = "OK") -> web.Response:
        body = envelope(result, self.fake.now_ns(), code, message)
        return web.Response(body=msgspec.json.encode(body), content_type="application/json")

    def _bad(self, message: str) -> web.Response:
        return self._answer({}, 10001, message)

    async def _time(self, request: web.Request) -> web.Response:
        now = self.fake.now_ns()
        return self._answer({"timeSecond": str(now // NS), "timeNano": str(now)})

    async def _instruments(self, request: web.Request) -> web.Response:
        query = request.query
        category = query.get("category", "")
        if category not in (SPOT, LINEAR):
            return self._bad("params error: Category is invalid")
        wanted = query.get("status", "Trading")
        rows: list[dict[str, Any]] = []
        build = spot_instrument if category == SPOT else linear_instrument
        for spec in self._specs(category):
            status = "Closed" if self.fake.is_delisted(spec.symbol) else "Trading"
            if status == wanted and query.get("symbol", market_id(spec)) == market_id(spec):
                rows.append(build(spec, status))
        result: dict[str, Any] = {"category": category, "list": rows}
        if category == LINEAR:
            try:
                limit = min(int(query.get("limit", LINEAR_PAGE_DEFAULT)), self.page_size_cap)
                offset = int(query.get("cursor") or 0)
            except ValueError:
                return self._bad("params error: limit or cursor is invalid")
            page = rows[offset : offset + limit]
            more = offset + limit < len(rows)
            result = {
                "category": category,
                "list": page,
                "nextPageCursor": str(offset + limit) if more else "",
            }
        return self._answer(result)

    async def _kline(self, request: web.Request) -> web.Response:
        query = request.query
        category = query.get("category", LINEAR)
        spec = self._listed(category, query.get("symbol", ""))
        if spec is None:
            return self._bad("Not supported symbols")
        if query.get("interval") != self.interval:
            return self._bad("Invalid period!")
        try:
            limit = max(1, min(int(query.get("limit", KLINE_LIMIT_DEFAULT)), KLINE_LIMIT_MAX))
            start = int(query["start"]) * MS if "start" in query else None
            end = int(query["end"]) * MS if "end" in query else None
        except ValueError:
            return self._bad("params error: start, end and limit must be integers")
        first = None if start is None else self.fake.open_of(start)
        candles = self.fake.history(spec.symbol, first, end, limit)
        rows = [kline_row(spec, c) for c in reversed(candles)]
        return self._answer({"symbol": market_id(spec), "category": category, "list": rows})

    async def _tickers(self, request: web.Request) -> web.Response:
        query = request.query
        category = query.get("category", "")
        if category not in (SPOT, LINEAR):
            return self._bad("params error: Category is invalid")
        if "symbol" in query:
            spec = self._listed(category, query["symbol"])
            if spec is None:
                return self._bad("Not supported symbols")
            specs = [spec]
        else:
            specs = [s for s in self._specs(category) if not self.fake.is_delisted(s.symbol)]
        rows = [self._ticker(spec, self.fake.snapshot(spec.symbol)) for spec in specs]
        return self._answer({"category": category, "list": rows})

    def _ticker(self, spec: SymbolSpec, update: Update, ws: bool = False) -> dict[str, Any]:
        """A ``tickers`` row (REST, or the websocket's, whose spot rows carry no bid/ask and
        whose linear rows add the funding cap and tick direction). The 24 h figures come
        from the price path a day back."""
        day_ago = self.fake.path.candle(spec.symbol, update.candle.open_ns - 86_400 * NS)
        last = update.candle.close
        volume = day_ago.volume * 1440
        row: dict[str, Any] = {"symbol": market_id(spec)}
        if not (ws and category_of(spec) == SPOT):
            row["bid1Price"] = price_text(update.bid, spec)
            row["bid1Size"] = qty_text(update.bid_qty, spec)
            row["ask1Price"] = price_text(update.ask, spec)
            row["ask1Size"] = qty_text(update.ask_qty, spec)
        row.update(
            {
                "lastPrice": price_text(last, spec),
                "prevPrice24h": price_text(day_ago.open, spec),
                "price24hPcnt": f"{(last - day_ago.open) / day_ago.open:.6f}",
                "highPrice24h": price_text(max(day_ago.high, update.candle.high, last), spec),
                "lowPrice24h": price_text(min(day_ago.low, update.candle.low, last), spec),
                "turnover24h": f"{volume * last:.4f}",
                "volume24h": qty_text(volume, spec),
            }
        )
        if category_of(spec) == SPOT:
            row["usdIndexPrice"] = price_text(last, spec)
            return row
        funding = self.fake.funding(spec.symbol, update.ts_ns)
        row.update(
            {
                "indexPrice": price_text(funding.index, spec),
                "markPrice": price_text(funding.mark, spec),
                "prevPrice1h": price_text(day_ago.close, spec),
                "openInterest": qty_text(volume / 3, spec),
                "openInterestValue": f"{volume / 3 * last:.2f}",
                "fundingRate": f"{funding.rate:.8f}".rstrip("0").rstrip("."),
                "nextFundingTime": str(funding.next_ns // MS),
                "preOpenPrice": "",
                "preQty": "",
                "curPreListingPhase": "",
            }
        )
        if ws:
            row["tickDirection"] = "MinusTick" if update.trade.buyer_maker else "PlusTick"
            row["fundingIntervalHour"] = "8"
            row["fundingCap"] = "0.005"
            row["singleOpenInterest"] = qty_text(volume / 6, spec)
            row["singleOpenInterestValue"] = f"{volume / 6 * last:.2f}"
        else:
            row.update(
                {
                    "predictedDeliveryPrice": "",
                    "basisRate": "",
                    "deliveryFeeRate": "",
                    "deliveryTime": "0",
                    "basis": "",
                }
            )
        return row

    def error(self, status: int) -> web.Response:
        """429: the API rate limit (HTTP 200, retCode 10006); 403: the IP limit; other codes:
        the edge's own page with that status."""
        now_ms = self.fake.now_ns() // MS
        if status == 429:
            body = envelope({}, self.fake.now_ns(), 10006, "Too many visits!")
            headers = {
                "X-Bapi-Limit": "600",
                "X-Bapi-Limit-Status": "0",
                "X-Bapi-Limit-Reset-Timestamp": str(now_ms + 1000),
            }
            return web.Response(
                body=msgspec.json.encode(body), content_type="application/json", headers=headers
            )
        if status == 403:
            return web.Response(status=403, text="access too frequent")
        return web.Response(
            status=status, text=ERROR_PAGE.format(code=status), content_type="text/html"
        )

    # -- websocket -------------------------------------------------------------------------

    async def on_open(self, conn: Connection) -> None:
        self.connections_opened += 1
        number = self.connections_opened
        conn.state["conn_id"] = f"fake{number:016x}-{number:x}"
        if conn.path == PRIVATE_WS:
            await self.private.stream.on_open(conn)
            return
        conn.state["category"] = WS_PATHS[conn.path]

    def _reply(
        self, conn: Connection, op: str, req_id: Any, ok: bool, message: str
    ) -> dict[str, Any]:
        reply: dict[str, Any] = {
            "success": ok,
            "ret_msg": message,
            "conn_id": conn.state["conn_id"],
        }
        if req_id is not None:
            reply["req_id"] = str(req_id)
        reply["op"] = op
        return reply

    async def on_message(self, conn: Connection, text: str) -> None:
        try:
            request = msgspec.json.decode(text)
        except msgspec.DecodeError:
            request = None
        if not isinstance(request, dict):
            await conn.send_json(self._reply(conn, "", None, False, "error:invalid op"))
            return
        if conn.path == PRIVATE_WS:
            await self.private.stream.on_message(conn, request)
            return
        op, req_id = request.get("op"), request.get("req_id")
        if op == "ping":
            await conn.send_json(self._pong(conn, req_id))
        elif op == "subscribe":
            await self._subscribe(conn, req_id, request.get("args"))
        elif op == "unsubscribe":
            topics = [t for t in self._topics(conn, request.get("args"))[0] if t in conn.topics]
            conn.unsubscribe(topics)
            await conn.send_json(self._reply(conn, "unsubscribe", req_id, True, ""))
        else:
            await conn.send_json(self._reply(conn, str(op), req_id, False, "error:invalid op"))

    def _pong(self, conn: Connection, req_id: Any) -> dict[str, Any]:
        """Spot answers ``op: pong`` with the server time; linear echoes ``op: ping``."""
        if conn.state["category"] == SPOT:
            now_ms = self.fake.now_ns() // MS
            pong: dict[str, Any] = {"req_id": str(req_id or ""), "op": "pong"}
            pong.update({"args": [str(now_ms)], "conn_id": conn.state["conn_id"]})
            return pong
        return self._reply(conn, "ping", req_id or "", True, "pong")

    async def _subscribe(self, conn: Connection, req_id: Any, args: Any) -> None:
        category = conn.state["category"]
        if category == SPOT and isinstance(args, list) and len(args) > SPOT_ARGS_MAX:
            await conn.send_json(self._reply(conn, "subscribe", req_id, False, "args size >10"))
            return
        topics, problem = self._topics(conn, args)
        already = [t.name for t in topics if t in conn.topics]
        if not problem and already:
            problem = f"error:already subscribed,topic:{already[0]}"
        if problem:
            await conn.send_json(self._reply(conn, "subscribe", req_id, False, problem))
            return
        conn.subscribe(topics)
        ack = "subscribe" if category == SPOT else ""
        await conn.send_json(self._reply(conn, "subscribe", req_id, True, ack))
        for topic in topics:
            if topic.kind in ("quote", "ticker") and not self.fake.faults.silent:
                frame = self.format(topic, self.fake.snapshot(topic.symbol))
                if frame is not None:
                    await conn.send_text(frame)

    def _topics(self, conn: Connection, args: Any) -> tuple[list[Topic], str]:
        """The topics ``args`` names on this channel, or the first one's Bybit error."""
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            return [], "error:args must be a list of topics"
        category = conn.state["category"]
        out: list[Topic] = []
        for name in args:
            parts = name.split(".")
            kind: TopicKind | None = None
            if parts[0] == "kline" and len(parts) == 3 and parts[1] == self.interval:
                kind = "kline"
            elif parts[0] == "publicTrade" and len(parts) == 2:
                kind = "trade"
            elif parts[0] == "orderbook" and len(parts) == 3:
                kind = "quote" if parts[1] in ORDERBOOK_DEPTHS[category] else None
            elif parts[0] == "tickers" and len(parts) == 2:
                kind = "ticker"
            if kind is None:
                return [], f"error:handler not found,topic:{name}"
            spec = self._listed(category, parts[-1])
            if spec is None:
                return [], f"Invalid symbol :[{name}]"
            out.append(Topic(kind, spec.symbol, name))
        return out, ""

    def format(self, topic: Topic, update: Update) -> str | None:
        spec = self.fake.specs.get(topic.symbol)
        if spec is None:
            return None
        frame: dict[str, Any]
        ts_ms = update.ts_ns // MS
        symbol_id = market_id(spec)
        if topic.kind == "kline":
            frame = {"topic": topic.name, "data": [self._kline_data(spec, update)]}
            frame.update({"ts": ts_ms, "type": "snapshot"})
        elif topic.kind == "trade":
            frame = {"topic": topic.name, "type": "snapshot", "ts": ts_ms}
            frame["data"] = [self._trade_data(spec, update)]
        elif topic.kind == "quote":
            book = {
                "s": symbol_id,
                "b": [[price_text(update.bid, spec), qty_text(update.bid_qty, spec)]],
                "a": [[price_text(update.ask, spec), qty_text(update.ask_qty, spec)]],
                "u": update.update_id,
                "seq": update.update_id * 7,
            }
            frame = {"topic": topic.name, "ts": ts_ms, "type": "snapshot", "data": book}
            frame["cts"] = max(0, ts_ms - 1)
        else:
            frame = {"topic": topic.name, "ts": ts_ms, "type": "snapshot"}
            frame.update({"cs": update.update_id * 7, "data": self._ticker(spec, update, True)})
        return msgspec.json.encode(frame).decode()

    def _kline_data(self, spec: SymbolSpec, update: Update) -> dict[str, Any]:
        candle = update.candle
        start_ms = candle.open_ns // MS
        return {
            "start": start_ms,
            "end": start_ms + self.fake.step_ns // MS - 1,
            "interval": self.interval,
            "open": price_text(candle.open, spec),
            "close": price_text(candle.close, spec),
            "high": price_text(candle.high, spec),
            "low": price_text(candle.low, spec),
            "volume": qty_text(candle.volume, spec),
            "turnover": f"{turnover(candle):.4f}",
            "confirm": update.closed,
            "timestamp": update.ts_ns // MS,
        }

    def _trade_data(self, spec: SymbolSpec, update: Update) -> dict[str, Any]:
        trade = update.trade
        spot = category_of(spec) == SPOT
        trade_id = (
            str(2_290_000_000_000_000_000 + trade.id)
            if spot
            else str(uuid.uuid5(TRADE_ID_SPACE, f"{spec.symbol}:{trade.id}"))
        )
        data: dict[str, Any] = {
            "i": trade_id,
            "T": trade.ts_ns // MS,
            "p": price_text(trade.price, spec),
            "v": qty_text(trade.qty, spec),
            "S": "Sell" if trade.buyer_maker else "Buy",
            "seq": update.update_id,
            "s": market_id(spec),
            "BT": False,
            "RPI": False,
        }
        if not spot:
            data["L"] = "MinusTick" if trade.buyer_maker else "PlusTick"
        return data

    def malformed(self, topic: Topic, update: Update) -> str:
        """Alternately a frame whose values have the wrong types and one whose ``data`` is
        not the structure the topic carries; both are valid JSON, as Bybit's would be."""
        ts_ms = update.ts_ns // MS
        if next(self._malformed) % 2:
            frame = {"topic": topic.name, "ts": ts_ms, "type": "snapshot", "data": "garbage"}
            return msgspec.json.encode(frame).decode()
        bad: dict[str, Any] = {
            "start": "not-a-time",
            "open": None,
            "close": "NaN?",
            "high": [],
            "low": {},
            "volume": "-",
            "confirm": "maybe",
            "T": "not-a-time",
            "p": None,
            "v": "-",
            "s": 42,
        }
        frame = {"topic": topic.name, "ts": ts_ms, "type": "snapshot"}
        frame["data"] = {"s": 42, "b": "x", "a": None} if topic.kind == "quote" else [bad]
        return msgspec.json.encode(frame).decode()

    # -- pointing ccxt here ----------------------------------------------------------------

    def urls(self, http_url: str, ws_url: str) -> dict[str, Any]:
        """Every REST and websocket base ccxt's ``bybit`` knows, on this server (the
        unserved private ones too, so that nothing can reach the real exchange)."""
        rest = {name: http_url for name in ("spot", "futures", "v2", "public", "private")}
        public = {c: f"{ws_url}/v5/public/{c}" for c in ("spot", "linear", "inverse", "option")}
        private_ws = f"{ws_url}/v5/private"
        private = {
            "spot": {"unified": private_ws, "nonUnified": f"{ws_url}/spot/private/v3"},
            "contract": private_ws,
            "usdc": f"{ws_url}/trade/option/usdc/private/v1",
            "trade": f"{ws_url}/v5/trade",
        }
        return {"api": {**rest, "ws": {"public": public, "private": private}}}

    def options(self) -> dict[str, Any]:
        """Markets of the two served categories only (no inverse, no options)."""
        return {"fetchMarkets": {"types": [SPOT, LINEAR]}}
