"""One exchange fake: a price path paced by the exchange clock, served by a protocol skin.

``FakeExchange`` runs a loopback aiohttp server (REST and websocket on one port) and ticks on
a ``Clock`` (``clock.ScaledClock`` in tests): ``updates_per_bar`` forming-candle updates per
interval, and at each close the closed candle's final frame, then the next candle's first.
Every update carries one trade print and a best bid/ask. What the exchange's wire looks like
is the skin's business; the core owns time, prices, subscriptions, faults and fan-out (each
frame is encoded once per tick and written to every connection subscribed to it).

Prices (``SymbolSpec``, ``PricePath``, ``default_symbols``) live in ``prices.py``, re-exported
here. A skin is a class (``SKINS`` maps ccxt ids to it, imported lazily) built as
``Skin(fake, exchange_id)`` that provides:

- ``exchange_ids: tuple[str, ...]``: the ccxt ids it serves (class attribute);
- ``ws_paths: tuple[str, ...]``: websocket routes (aiohttp patterns, ``/ws/{tail:.*}``),
  mirroring the exchange's paths;
- ``routes() -> list[web.RouteDef]``: the REST endpoints, at the exchange's own paths; the
  handlers read the fake's ``specs``, ``history(...)``, ``snapshot(...)``, ``funding(...)``,
  ``now_ns()``, ``is_delisted(...)`` and ``account`` (orders and fills: ``matching.py``);
- ``async on_open(conn)`` and ``async on_message(conn, text)``: a new socket, and each text
  frame from ccxt: answer subscribe/unsubscribe/ping with ``conn.send_json`` and change the
  socket's subscriptions with ``conn.subscribe(topics)`` / ``conn.unsubscribe(topics)``;
- ``format(topic, update) -> str | None``: the data frame of one ``Topic`` (kind ``kline``,
  ``trade``, ``quote`` or ``ticker``) for one ``Update``, or None for nothing;
- ``malformed(topic, update) -> str``: a garbage or wrong-typed frame for that topic;
- ``error(status) -> web.Response``: the exchange's error answer (``faults.http_errors``);
- ``urls(http_url, ws_url) -> dict`` and ``options() -> dict``: what ``venue_entry`` lays
  over ccxt's ``urls`` / ``options`` so that ccxt's own code path reaches this server and
  ``load_markets`` asks only for what the fake serves;
- optionally ``ping_every_s: float``: the server sends a websocket ping frame that often
  (exchange seconds, silent or not), as Binance does; 0 or absent for none.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Protocol

import msgspec
from aiohttp import WSMsgType, web

from contracts.intervals import interval_ns
from services.runtime.clock import Clock
from tests.fakes.matching import Account, Kind, NoAnswer, default_kind
from tests.fakes.prices import (
    NS,
    Candle,
    PricePath,
    SymbolSpec,
    decimals,
    default_symbols,
    fmt,
    snap,
    unit,
)

__all__ = [
    "NS",
    "SKINS",
    "Candle",
    "Connection",
    "FakeExchange",
    "Faults",
    "Funding",
    "PricePath",
    "Skin",
    "SpecTable",
    "SymbolSpec",
    "Topic",
    "TopicKind",
    "TradePrint",
    "Update",
    "decimals",
    "default_symbols",
    "fmt",
    "snap",
    "start_fake",
]
SKINS: dict[str, str] = {
    "binance": "tests.fakes.binance:BinanceSkin",
    "binanceusdm": "tests.fakes.binance:BinanceSkin",
    "bybit": "tests.fakes.bybit:BybitSkin",
    "kraken": "tests.fakes.kraken:KrakenSkin",
    "krakenfutures": "tests.fakes.krakenfutures:KrakenFuturesSkin",
}
TopicKind = Literal["kline", "trade", "quote", "ticker"]
FUNDING_PERIOD_NS = 8 * 3600 * NS
LISTED_FOR_NS = 30 * 86_400 * NS


DEFAULT_SECRET = "ZmFrZS1zZWNyZXQ="
"""``fake.api_secret`` by default: valid base64 (of "fake-secret"), so Kraken's and Kraken
Futures' signing works as it is; Binance and Bybit sign with the string itself."""
CLOSES_KEPT = 200_000  # close_sent entries: a few hundred closes of 541 symbols


class TradePrint(msgspec.Struct, frozen=True):
    id: int
    ts_ns: int
    price: float
    qty: float
    buyer_maker: bool


class Update(msgspec.Struct, frozen=True):
    """What one tick says about one symbol; ``closed`` marks a candle's final frame."""

    symbol: str
    ts_ns: int
    candle: Candle
    close_ns: int
    closed: bool
    trade: TradePrint
    bid: float
    bid_qty: float
    ask: float
    ask_qty: float
    update_id: int


class Funding(msgspec.Struct, frozen=True):
    symbol: str
    ts_ns: int
    rate: float
    next_ns: int
    mark: float
    index: float


class Topic(msgspec.Struct, frozen=True):
    """One subscribable stream: ``name`` is the skin's own (``btcusdt@kline_1m``);
    ``wrapped`` marks a variant framed differently (Binance's combined-stream envelope), so
    each variant is still encoded once per tick."""

    kind: TopicKind
    symbol: str
    name: str
    wrapped: bool = False


class SpecTable(dict[str, SymbolSpec]):
    """The markets a fake lists, by unified symbol; a market added at any time (a listing
    mid-session) is known to the price path at once, with its own start price and tick."""

    def __init__(self, path: PricePath, step_ns: int, specs: Iterable[SymbolSpec]) -> None:
        super().__init__()
        self._path = path
        self._step_ns = step_ns
        self.version = 0
        """Counts changes, so a skin's index by exchange id knows when to rebuild."""
        self.update({spec.symbol: spec for spec in specs})

    def __setitem__(self, symbol: str, spec: SymbolSpec) -> None:
        super().__setitem__(symbol, spec)
        self._path.register([spec], self._step_ns)
        self.version += 1

    def __delitem__(self, symbol: str) -> None:
        super().__delitem__(symbol)
        self.version += 1

    def update(self, *args: Any, **kwargs: Any) -> None:
        for symbol, spec in dict(*args, **kwargs).items():
            self[symbol] = spec


class Faults:
    """What a test makes the exchange do wrong; set at any time."""

    def __init__(self, fake: FakeExchange) -> None:
        self._fake = fake
        self.silent = False
        self.gaps: set[int] = set()
        """Candle open times with no row at all: a halt, an outage, or an exchange that lists
        no candle for a minute without trades."""
        self.quiet: set[int] = set()
        """Candle open times without trades that the exchange still lists (Binance): a flat
        candle at the previous close with zero volume, and no trade frames."""
        self.malformed = 0
        self.out_of_order = 0
        self.http_errors: deque[int] = deque()
        self.delisted: set[str] = set()
        self.delisted_at: dict[str, int] = {}

    def drop(self) -> None:
        """Close every websocket now (ccxt sees the close; its next watch reconnects)."""
        self._fake.drop_connections()

    def delist(self, symbol: str) -> None:
        """The market turns inactive in REST, its streams stop and its history ends now."""
        self.delisted.add(symbol)
        self.delisted_at.setdefault(symbol, self._fake.now_ns())


class Connection:
    """One websocket: its subscriptions and a per-skin scratch table."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, fake: FakeExchange) -> None:
        self.ws = ws
        self.request = request
        self.path = request.path
        self.topics: set[Topic] = set()
        self.state: dict[str, Any] = {}
        self._fake = fake

    def subscribe(self, topics: Iterable[Topic]) -> None:
        for topic in topics:
            self.topics.add(topic)
            self._fake.subscribers.setdefault(topic, set()).add(self)

    def unsubscribe(self, topics: Iterable[Topic]) -> None:
        for topic in topics:
            self.topics.discard(topic)
            self._fake.subscribers.get(topic, set()).discard(self)

    async def send_text(self, text: str) -> None:
        if not self.ws.closed:
            await self.ws.send_str(text)

    async def send_json(self, value: Any) -> None:
        await self.send_text(msgspec.json.encode(value).decode())


class Skin(Protocol):
    exchange_ids: tuple[str, ...]
    ws_paths: tuple[str, ...]

    def routes(self) -> list[web.RouteDef]: ...

    async def on_open(self, conn: Connection) -> None: ...

    async def on_message(self, conn: Connection, text: str) -> None: ...

    def format(self, topic: Topic, update: Update) -> str | None: ...

    def malformed(self, topic: Topic, update: Update) -> str: ...

    def error(self, status: int) -> web.Response: ...

    def urls(self, http_url: str, ws_url: str) -> dict[str, Any]: ...

    def options(self) -> dict[str, Any]: ...


def skin_class(exchange_id: str) -> type:
    where = SKINS.get(exchange_id)
    if where is None:
        raise ValueError(f"no exchange fake for {exchange_id!r} (have: {', '.join(SKINS)})")
    module, _, name = where.partition(":")
    return getattr(importlib.import_module(module), name)


class FakeExchange:
    """A loopback exchange (see the module docstring); ``start()``, then point ccxt at it
    with ``venue_entry(name)``."""

    def __init__(
        self,
        skin: str | type,
        symbols: Sequence[SymbolSpec],
        path: PricePath | None,
        clock: Clock,
        interval: str = "1m",
        updates_per_bar: int = 4,
        balances: dict[str, float] | None = None,
        kind: Kind | None = None,
    ) -> None:
        self.exchange_id = skin if isinstance(skin, str) else skin.exchange_ids[0]
        skin_type = skin_class(skin) if isinstance(skin, str) else skin
        self.clock = clock
        self.interval = interval
        self.step_ns = interval_ns(interval)
        self.updates_per_bar = max(1, updates_per_bar)
        self.path = path if path is not None else PricePath.synthetic()
        if self.path.bars and self.path.step_ns != self.step_ns:
            raise ValueError(f"the bar file's interval is not {interval}")
        self.specs = SpecTable(self.path, self.step_ns, symbols)
        self.faults = Faults(self)
        self.api_secret = DEFAULT_SECRET
        self.account = Account(self, kind or default_kind(self.exchange_id), balances)
        self.requests: Counter[str] = Counter()
        self.frames_sent = 0
        self.subscribers: dict[Topic, set[Connection]] = {}
        self.connections: set[Connection] = set()
        self.ticks = 0
        self.behind = 0
        self.pings_sent = 0
        self.listed_ns = self.open_of(clock.now_ns()) - LISTED_FOR_NS
        """The first candle the exchange has (its listing): history starts there."""
        self.skin: Skin = skin_type(self, self.exchange_id)
        self.http_url = ""
        self.ws_url = ""
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[Any]] = set()
        self._last_closed: dict[str, Update] = {}
        self.close_sent: dict[tuple[str, int], int] = {}
        """(symbol, close) -> wall ns when the next candle's first frame (the one that shows
        the candle closed) went out: a benchmark splits latency into the fake's and Keel's."""

    # -- time and prices -------------------------------------------------------------------

    def now_ns(self) -> int:
        return self.clock.now_ns()

    def open_of(self, ts_ns: int) -> int:
        return ts_ns - ts_ns % self.step_ns

    def is_delisted(self, symbol: str) -> bool:
        return symbol in self.faults.delisted

    def history(
        self,
        symbol: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        limit: int = 500,
    ) -> list[Candle]:
        """Candles as the exchange's REST history has them, oldest first: every closed candle
        since ``listed_ns`` up to now (or the delisting) plus the forming one, none for a gap
        minute. With
        ``start_ns`` the first ``limit`` from there, else the last ``limit`` up to ``end_ns``
        (or now)."""
        now = min(self.now_ns(), self.faults.delisted_at.get(symbol, self.now_ns()))
        forming = self.open_of(now)
        last = forming if end_ns is None else min(forming, self.open_of(end_ns))
        out: list[Candle] = []
        if start_ns is not None:
            open_ns = max(self.open_of(start_ns + self.step_ns - 1), self.listed_ns)
            while open_ns <= last and len(out) < limit:
                if open_ns not in self.faults.gaps:
                    out.append(self._candle_at(symbol, open_ns, now))
                open_ns += self.step_ns
            return out
        open_ns = last
        oldest = max(self.listed_ns, last - (limit + len(self.faults.gaps)) * self.step_ns)
        while len(out) < limit and open_ns >= oldest:
            if open_ns not in self.faults.gaps:
                out.append(self._candle_at(symbol, open_ns, now))
            open_ns -= self.step_ns
        out.reverse()
        return out

    def _candle_at(self, symbol: str, open_ns: int, now: int) -> Candle:
        return self.candle(symbol, open_ns, (now - open_ns) / self.step_ns)

    def candle(self, symbol: str, open_ns: int, fraction: float = 1.0) -> Candle:
        """The candle as this exchange shows it at ``fraction`` of its interval: the price
        path's, or for a ``faults.quiet`` minute a flat one at the previous close."""
        if open_ns not in self.faults.quiet:
            return self.path.partial(symbol, open_ns, fraction)
        last = self.path.candle(symbol, open_ns - self.step_ns).close
        return Candle(open_ns, last, last, last, last, 0.0, 0)

    def snapshot(self, symbol: str, ts_ns: int | None = None) -> Update:
        """The symbol as of ``ts_ns`` (now): forming candle, last trade, best bid/ask."""
        now = self.now_ns() if ts_ns is None else ts_ns
        open_ns = self.open_of(now)
        return self._update(symbol, open_ns, (now - open_ns) / self.step_ns, now, False)

    def funding(self, symbol: str, ts_ns: int | None = None) -> Funding:
        """A deterministic funding rate, paid every 8 h at 00/08/16 UTC."""
        now = self.now_ns() if ts_ns is None else ts_ns
        period = now // FUNDING_PERIOD_NS
        rate = round(0.0001 * (1 + math.sin(period + unit(symbol, "funding") * 6)), 8)
        mark = self.snapshot(symbol, now).candle.close
        return Funding(symbol, now, rate, (period + 1) * FUNDING_PERIOD_NS, mark, mark)

    def _update(self, symbol: str, open_ns: int, fraction: float, ts: int, closed: bool) -> Update:
        spec = self.specs.get(symbol) or self.path._spec(symbol)
        candle = self.candle(symbol, open_ns, 1.0 if closed else fraction)
        within = round(fraction * self.updates_per_bar)
        sequence = (open_ns // self.step_ns) * (self.updates_per_bar + 1) + within
        prev = self.candle(symbol, open_ns, max(0.0, fraction - 1 / self.updates_per_bar))
        qty = snap(max(candle.volume - prev.volume, spec.lot_size), spec.lot_size)
        tick, lot = spec.tick_size, spec.lot_size
        depth = snap(lot * (1 + 20 * unit(symbol, sequence, "depth")), lot)
        trade = TradePrint(
            id=sequence + 1,
            ts_ns=ts,
            price=candle.close,
            qty=qty,
            buyer_maker=candle.close < prev.close,
        )
        return Update(
            symbol=symbol,
            ts_ns=ts,
            candle=candle,
            close_ns=open_ns + self.step_ns - 1,
            closed=closed,
            trade=trade,
            bid=snap(candle.close - tick, tick),
            bid_qty=depth,
            ask=candle.close,
            ask_qty=snap(depth * 1.5, lot),
            update_id=sequence + 1,
        )

    # -- server ----------------------------------------------------------------------------

    async def start(self) -> FakeExchange:
        app = web.Application(middlewares=[self._middleware])
        app.add_routes(self.skin.routes())
        app.router.add_get("/__fake/close-sent", self._close_sent)
        for ws_path in self.skin.ws_paths:
            app.router.add_get(ws_path, self._websocket)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.http_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self._ticker = asyncio.create_task(self._tick_loop())
        return self

    async def _close_sent(self, request: web.Request) -> web.Response:
        rows = [[symbol, close, wall] for (symbol, close), wall in self.close_sent.items()]
        return web.json_response(rows)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        for conn in list(self.connections):
            await conn.ws.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeExchange:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def venue_entry(self, name: str) -> dict[str, Any]:
        """A complete ``[[venues]]`` table pointing ccxt at this fake."""
        return {
            "name": name,
            "exchange": self.exchange_id,
            "urls": self.skin.urls(self.http_url, self.ws_url),
            "options": self.skin.options(),
        }

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if handler == self._websocket:
            return await handler(request)
        self.requests[request.path] += 1
        if self.faults.http_errors:
            return self.skin.error(self.faults.http_errors.popleft())
        try:
            return await handler(request)
        except NoAnswer:  # the account's faults: close the connection, answer nothing
            request.transport.close()  # type: ignore[union-attr]
            raise web.HTTPServiceUnavailable() from None

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, compress=False, max_msg_size=0, timeout=2.0)
        await ws.prepare(request)
        conn = Connection(ws, request, self)
        self.connections.add(conn)
        pinger = asyncio.create_task(self._ping(ws, getattr(self.skin, "ping_every_s", 0.0)))
        try:
            await self.skin.on_open(conn)
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await self.skin.on_message(conn, message.data)
                elif message.type == WSMsgType.ERROR:
                    break
        finally:
            pinger.cancel()
            self._forget(conn)
        return ws

    async def _ping(self, ws: web.WebSocketResponse, every_s: float) -> None:
        while every_s > 0 and not ws.closed:
            await self.clock.sleep(every_s)
            if not ws.closed:
                try:
                    await ws.ping()
                except (ConnectionError, RuntimeError):
                    return
                self.pings_sent += 1

    def _forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        conn.unsubscribe(list(conn.topics))

    def drop_connections(self) -> None:
        for conn in list(self.connections):
            self._forget(conn)
            task = asyncio.get_running_loop().create_task(
                conn.ws.close(code=1001, message=b"fake exchange: dropped")
            )
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    # -- ticking ---------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        step = self.step_ns // self.updates_per_bar
        index = self.now_ns() // step + 1
        while True:
            await self.clock.sleep((index * step - self.now_ns()) / NS)
            due = self.now_ns() // step
            if due > index:  # behind: skip forming updates, send the closes (the last 60)
                self.behind += due - index
                closes = [i for i in range(index, due) if i % self.updates_per_bar == 0]
                for i in closes[-60:]:
                    await self._tick(i * step, closes_only=True)
                index = due
            await self._tick(index * step)
            index += 1

    async def _tick(self, ts: int, closes_only: bool = False) -> None:
        """One update for every subscribed symbol: at a close, the closed candle's final
        frame first, then the next candle's first frame."""
        self.ticks += 1
        self.account.match(ts)
        if self.faults.silent:
            return
        open_ns = self.open_of(ts)
        fraction = (ts - open_ns) / self.step_ns
        by_symbol: dict[str, list[Topic]] = {}
        for topic, conns in self.subscribers.items():
            if conns:
                by_symbol.setdefault(topic.symbol, []).append(topic)
        for symbol, topics in by_symbol.items():
            if symbol in self.faults.delisted:
                continue
            if fraction == 0:
                previous = open_ns - self.step_ns
                if previous not in self.faults.gaps:
                    closed = self._update(symbol, previous, 1.0, ts, True)
                    await self._send(topics, closed, klines_only=True)
                    self._last_closed[symbol] = closed
            if closes_only or open_ns in self.faults.gaps:
                continue
            update = self._update(symbol, open_ns, fraction, ts, False)
            await self._send(topics, update, trades=open_ns not in self.faults.quiet)
            if fraction == 0:
                self.close_sent[(symbol, open_ns)] = time.time_ns()
        if len(self.close_sent) > CLOSES_KEPT:
            for key in list(self.close_sent)[: len(self.close_sent) // 2]:
                del self.close_sent[key]

    async def _send(
        self, topics: list[Topic], update: Update, klines_only: bool = False, trades: bool = True
    ) -> None:
        for topic in topics:
            if (klines_only and topic.kind != "kline") or (topic.kind == "trade" and not trades):
                continue
            current = update
            if topic.kind == "kline" and self.faults.out_of_order > 0:
                older = self._last_closed.get(topic.symbol)
                if older is not None and older.candle.open_ns < update.candle.open_ns:
                    self.faults.out_of_order -= 1
                    current = older
            if self.faults.malformed > 0:
                self.faults.malformed -= 1
                frame: str | None = self.skin.malformed(topic, current)
            else:
                frame = self.skin.format(topic, current)
            if frame is None:
                continue
            for conn in list(self.subscribers.get(topic, ())):
                if conn.ws.closed:
                    continue
                try:
                    await conn.ws.send_str(frame)
                except (ConnectionError, RuntimeError):  # the peer went away mid-write
                    self._forget(conn)
                    continue
                self.frames_sent += 1


async def start_fake(
    exchange_id: str,
    symbols: Sequence[SymbolSpec],
    clock: Clock,
    *,
    path: PricePath | None = None,
    interval: str = "1m",
    updates_per_bar: int = 4,
    balances: dict[str, float] | None = None,
    kind: Kind | None = None,
) -> FakeExchange:
    """A started fake of ``exchange_id`` (``binance``, ``binanceusdm``, ``bybit``, ``kraken``,
    ``krakenfutures``); ``balances`` (asset -> free) seed its account (default: generous)."""
    fake = FakeExchange(
        exchange_id, symbols, path, clock, interval, updates_per_bar, balances, kind
    )
    return await fake.start()
