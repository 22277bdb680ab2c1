"""The TWS fake's socket server: handshake, one session per client id, dispatch by message id.

It speaks server version 178 to any client whose range includes it, answers ``startApi``
with ``managedAccounts``, ``nextValidId`` and the farm-status notices (2104, 2106, 2158) the
real gateway sends, refuses a client id already connected with error 326, and then serves
requests until the socket closes. Time is the injected clock's (``ScaledClock`` in tests):
bars, execution times and the pacing window all run on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from zoneinfo import ZoneInfo

from services.runtime.cancelling import end_tasks
from services.runtime.clock import Clock
from tests.fakes.tws import messages as m
from tests.fakes.tws.account import AccountDesk
from tests.fakes.tws.contracts import Catalogue, Listing, Query, default_listings, is_open
from tests.fakes.tws.faults import IN_USE, PACING, Faults
from tests.fakes.tws.market import (
    NS,
    STEP_NS,
    Market,
    RequestError,
    bar_date,
    bar_seconds,
    duration_seconds,
    parse_end,
)
from tests.fakes.tws.orders import Broker, Execution, Position, Ticket, Working
from tests.fakes.tws.wire import WireError, flag, frame, integer, number, read_frame, read_hello

STOP_S = 10.0
"""Wall seconds a stopping fake gives its connections and its matching loop to end."""
NOTICES = (
    (2104, "Market data farm connection is OK:usfarm"),
    (2104, "Market data farm connection is OK:usfuture"),
    (2106, "HMDS data farm connection is OK:ushmds"),
    (2158, "Sec-def data farm connection is OK:secdefnj"),
)


class Session:
    """One connected API client."""

    def __init__(self, client_id: int, writer: asyncio.StreamWriter) -> None:
        self.client_id = client_id
        self.writer = writer
        self.streams: dict[int, asyncio.Task[None]] = {}
        self.positions = False
        self.account_updates = False

    def send(self, fields: m.Fields) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame(fields))

    def stop_streams(self) -> None:
        for task in self.streams.values():
            task.cancel()
        self.streams.clear()

    def close(self) -> None:
        self.stop_streams()
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


class TwsFake:
    """IB Gateway on a loopback port: ``async with TwsFake(clock) as tws: tws.port``."""

    def __init__(
        self,
        clock: Clock,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        account: str = "DU1234567",
        seed: int = 0,
        listings: Iterable[Listing] | None = None,
        cash: float = 1_000_000.0,
    ) -> None:
        self.clock = clock
        self.host = host
        self.port = port
        self.account = account
        self.catalogue = Catalogue(
            listings if listings is not None else default_listings(clock.now_ns())
        )
        self.market = Market(seed)
        self.broker = Broker(account, self, cash)
        self.broker.market_open = self.tradable
        self.faults = Faults(self)
        self.desk = AccountDesk(self)
        self.sessions: dict[int, Session] = {}
        self.next_order_id = 1
        self.history_log: deque[tuple[int, tuple[str, ...]]] = deque()
        self.pace_same_s = 15.0
        self.pace_window_s = 600.0
        self.pace_max = 60
        self.held: list[tuple[int, list[str]]] = []
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._serving: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TwsFake:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> TwsFake:
        await self.listen()
        self._ticker = asyncio.create_task(self._match_loop())
        return self

    async def listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def stop(self) -> None:
        """Bounded, like a gateway's stop (a cancel can be lost: ``cancelling.py``)."""
        if self._ticker is not None:
            await end_tasks([self._ticker], STOP_S)
        await self.close_listener()
        self.faults.drop()
        stuck = await end_tasks(self._serving, STOP_S)
        assert not stuck, f"TWS fake: {len(stuck)} connections would not close"

    def now(self) -> int:
        return self.clock.now_ns()

    def tradable(self, listing: Listing, now_ns: int) -> bool:
        return is_open(listing, now_ns, rth=listing.secType == "STK")

    def price(self, listing: Listing) -> float:
        return self.market.price(listing, self.now())

    def today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self.now() / NS, ZoneInfo("US/Central")).date()

    async def _match_loop(self) -> None:
        """The exchange keeps matching even while the gateway's link is down (1100)."""
        while True:
            await asyncio.sleep(0.05)
            self.broker.step(self.now(), self.price)

    # -- connections -------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session: Session | None = None
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            low, high = await read_hello(reader)
            if high < m.SERVER_VERSION or low > m.SERVER_VERSION:
                return
            writer.write(frame([m.SERVER_VERSION, m.hello_time(self.now())]))
            fields = await read_frame(reader)
            if not fields or integer(fields[0]) != m.START_API:
                return
            client_id = integer(fields[2])
            if client_id in self.sessions or client_id in self.faults.held_ids:
                writer.write(frame(m.error(-1, 326, IN_USE)))
                await writer.drain()
                return
            session = Session(client_id, writer)
            self.sessions[client_id] = session
            session.send(m.managed_accounts(self.account))
            session.send(m.next_valid_id(self.next_order_id))
            for code, text in NOTICES:
                session.send(m.error(-1, code, text))
            while True:
                fields = await read_frame(reader)
                if fields:
                    await self._dispatch(session, fields)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, WireError, ValueError, IndexError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._serving.discard(task)
            if session is not None:
                session.close()
                if self.sessions.get(session.client_id) is session:
                    del self.sessions[session.client_id]
            with contextlib.suppress(Exception):
                writer.close()

    def broadcast(self, fields: m.Fields) -> None:
        for session in self.sessions.values():
            session.send(fields)

    def _client(self, client_id: int) -> Session | None:
        """The session order messages for ``client_id`` go to (none while the link is down)."""
        return self.sessions.get(client_id) if self.faults.linked else None

    async def _dispatch(self, s: Session, f: list[str]) -> None:
        handler = self._handlers().get(integer(f[0]))
        if handler is None:
            s.send(
                m.error(
                    -1,
                    321,
                    f"Error validating request.-'{f[0]}' : cause - not served by this gateway",
                )
            )
            return
        await handler(s, f)

    def _handlers(self) -> dict[int, Callable[[Session, list[str]], Awaitable[None]]]:
        return {
            m.CURRENT_TIME: self._current_time,
            m.IDS: self._ids,
            m.MANAGED: self._managed,
            m.CONTRACT_DETAILS: self._contract_details,
            m.HISTORICAL: self._historical,
            m.CANCEL_HISTORICAL: self._cancel_stream,
            m.REALTIME: self._realtime,
            m.CANCEL_REALTIME: self._cancel_stream,
            m.PLACE: self._place,
            m.CANCEL: self._cancel,
            m.GLOBAL_CANCEL: self._global_cancel,
            m.OPEN_ORDERS: self._open_orders,
            m.ALL_OPEN_ORDERS: self._open_orders,
            m.COMPLETED: self._completed,
            m.EXECUTIONS: self.desk.executions,
            m.POSITIONS: self.desk.positions,
            m.CANCEL_POSITIONS: self.desk.cancel_positions,
            m.ACCOUNT_UPDATES: self.desk.account_updates,
            m.ACCOUNT_MULTI: self.desk.account_multi,
            m.CANCEL_ACCOUNT_MULTI: self._ignore,
            m.ACCOUNT_SUMMARY: self.desk.account_summary,
            m.CANCEL_ACCOUNT_SUMMARY: self._ignore,
            m.AUTO_OPEN_ORDERS: self._ignore,
            m.MARKET_DATA_TYPE: self._ignore,
            1: self._market_data,
        }

    async def _ignore(self, s: Session, f: list[str]) -> None:
        return None

    async def _current_time(self, s: Session, f: list[str]) -> None:
        s.send(m.current_time(self.now()))

    async def _ids(self, s: Session, f: list[str]) -> None:
        s.send(m.next_valid_id(self.next_order_id))

    async def _managed(self, s: Session, f: list[str]) -> None:
        s.send(m.managed_accounts(self.account))

    async def _market_data(self, s: Session, f: list[str]) -> None:
        s.send(m.error(integer(f[2]), 354, "Requested market data is not subscribed."))

    # -- contracts and bars ------------------------------------------------------------

    async def _contract_details(self, s: Session, f: list[str]) -> None:
        req_id = integer(f[2])
        found = self.catalogue.match(Query.from_fields(f[3:15]), self.today())
        if not found:
            s.send(m.error(req_id, 200, "No security definition has been found for the request"))
            return
        for listing in found:
            s.send(m.contract_details(req_id, listing, self.now()))
        s.send(m.contract_details_end(req_id))

    def _listing(self, q: Query) -> Listing | None:
        found = self.catalogue.match(q, self.today())
        return found[0] if len(found) == 1 else None

    def _paced(self, key: tuple[str, ...]) -> bool:
        """IB's historical pacing (exchange time): no identical request within
        ``pace_same_s`` (15 s), at most ``pace_max`` (60) in ``pace_window_s`` (10 min)."""
        now = self.now()
        log = self.history_log
        while log and now - log[0][0] > self.pace_window_s * NS:
            log.popleft()
        same = any(k == key and now - t < self.pace_same_s * NS for t, k in log)
        if self.faults.pace_next or same or len(log) >= self.pace_max:
            self.faults.pace_next = False
            return True
        log.append((now, key))
        return False

    async def _historical(self, s: Session, f: list[str]) -> None:
        req_id = integer(f[1])
        listing = self._listing(Query.from_fields(f[2:14]))
        end_text, size, duration, rth, show, fmt = f[15], f[16], f[17], flag(f[18]), f[19], f[20]
        keep = flag(f[21])
        if listing is None:
            s.send(m.error(req_id, 200, "No security definition has been found for the request"))
            return
        if self._paced((str(listing.conId), end_text, size, duration, show, str(rth))):
            s.send(m.error(req_id, 162, PACING))
            return
        now = self.now()
        try:
            if keep and end_text:
                raise RequestError("End date not supported with live updates")
            seconds, span, end = (
                bar_seconds(size),
                duration_seconds(duration),
                parse_end(end_text, now),
            )
        except RequestError as exc:
            s.send(m.error(req_id, 321, f"Error validating request.-'bP' : cause - {exc}"))
            return
        fmt_date = integer(fmt, 1)
        zone = listing.timeZoneId

        def date(t: int) -> str:
            return bar_date(t, seconds, fmt_date, zone)

        rows = self.market.history(listing, end, span, seconds, now, rth)
        rows_out = [(date(r.open_ns), r) for r in rows]
        s.send(m.historical_data(req_id, date(end - span * NS), date(end), rows_out))
        if keep:
            s.streams[req_id] = asyncio.create_task(
                self._keep_up(s, req_id, listing, seconds, rth, date)
            )

    async def _keep_up(
        self,
        s: Session,
        req_id: int,
        listing: Listing,
        seconds: int,
        rth: bool,
        date: Callable[[int], str],
    ) -> None:
        step = seconds * NS
        now = self.now()
        boundary = now - now % STEP_NS + STEP_NS
        while True:
            await self.clock.sleep((boundary - self.now()) / 1e9)
            open_ns = (boundary - STEP_NS) // step * step
            row = self.market.bar(listing, open_ns, seconds, boundary, rth)
            if row is not None and self.faults.linked:
                s.send(m.historical_update(req_id, date(open_ns), row))
            boundary += STEP_NS

    async def _realtime(self, s: Session, f: list[str]) -> None:
        req_id = integer(f[2])
        listing = self._listing(Query.from_fields(f[3:15]))
        if listing is None:
            s.send(m.error(req_id, 200, "No security definition has been found for the request"))
            return
        if integer(f[15]) != 5:
            s.send(
                m.error(req_id, 321, "Error validating request.-'bR' : cause - Invalid bar size")
            )
            return
        s.streams[req_id] = asyncio.create_task(self._stream_5s(s, req_id, listing, flag(f[17])))

    async def _stream_5s(self, s: Session, req_id: int, listing: Listing, rth: bool) -> None:
        """One bar per 5 exchange seconds; a late wake-up catches up rather than skips."""
        now = self.now()
        boundary = now - now % STEP_NS + STEP_NS
        while True:
            await self.clock.sleep((boundary - self.now()) / 1e9)
            row = self.market.candle(listing, boundary - STEP_NS, rth)
            if row is not None and self.faults.linked:
                s.send(m.realtime_bar(req_id, row))
            boundary += STEP_NS

    async def _cancel_stream(self, s: Session, f: list[str]) -> None:
        task = s.streams.pop(integer(f[2]), None)
        if task is not None:
            task.cancel()

    # -- orders ------------------------------------------------------------------------

    async def _place(self, s: Session, f: list[str]) -> None:
        if not self.faults.linked:
            self.held.append((s.client_id, f))
            return
        self._place_now(s.client_id, f)

    def release_held_orders(self) -> None:
        held, self.held = self.held, []
        for client_id, f in held:
            self._place_now(client_id, f)

    def _place_now(self, client_id: int, f: list[str]) -> None:
        order_id = integer(f[1])
        self.next_order_id = max(self.next_order_id, order_id + 1)
        q = Query.from_fields(f[2:14])
        listing = self.catalogue.by_conid.get(q.conId) if q.conId else self._listing(q)
        ticket = Ticket(
            order_id=order_id,
            client_id=client_id,
            conid=listing.conId if listing else 0,
            action=f[16],
            quantity=number(f[17]),
            order_type=f[18],
            lmt_price=number(f[19]) if f[19] else None,
            aux_price=number(f[20]) if f[20] else None,
            tif=f[21] or "DAY",
            oca_group=f[22],
            account=f[23] or self.account,
            order_ref=f[26],
            transmit=flag(f[27]),
            parent_id=integer(f[28]),
            outside_rth=flag(f[33]),
            oca_type=integer(f[46]),
        )
        if listing is None or q.secType == "BAG":
            self.order_error(ticket, 200, "No security definition has been found for the request")
            return
        self.broker.place(ticket, listing, self.now(), self.price(listing))

    async def _cancel(self, s: Session, f: list[str]) -> None:
        order_id = integer(f[2])
        problem = self.broker.cancel(s.client_id, order_id, self.now())
        if problem is not None:
            s.send(m.error(order_id, *problem))

    async def _global_cancel(self, s: Session, f: list[str]) -> None:
        self.broker.cancel_all(self.now())

    async def _open_orders(self, s: Session, f: list[str]) -> None:
        client = None if integer(f[0]) == m.ALL_OPEN_ORDERS else s.client_id
        for order in self.broker.open_orders(client):
            s.send(m.open_order(order))
            s.send(m.order_status(order))
        s.send(m.open_order_end())

    async def _completed(self, s: Session, f: list[str]) -> None:
        for order in self.broker.completed():
            s.send(m.completed_order(order))
        s.send(m.completed_orders_end())

    # -- what the broker tells clients (the orders.Sink) ----------------------------------

    def order_changed(self, order: Working) -> None:
        session = self._client(order.ticket.client_id)
        if session is None or order.status == "Held":
            return
        if order.status != "Cancelled":
            session.send(m.open_order(order))
        session.send(m.order_status(order))

    def executed(self, order: Working, execution: Execution) -> None:
        session = self._client(order.ticket.client_id)
        if session is None:
            return
        session.send(m.exec_details(-1, execution, order.listing))
        session.send(m.order_status(order))
        if order.status == "Filled":
            session.send(m.open_order(order))
        session.send(m.commission_report(execution))

    def order_error(self, order: Ticket, code: int, text: str) -> None:
        session = self._client(order.client_id)
        if session is not None:
            session.send(m.error(order.order_id, code, text))

    def position_changed(self, position: Position) -> None:
        if not self.faults.linked:
            return
        self.desk.position_changed(position)
