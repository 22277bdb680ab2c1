"""Connection to the event log: typed publish with de-duplication ids, and reads.

Awaited publishes are for decisions (orders, fills), where each one must be stored before
the input is acknowledged; bulk market data goes through a bounded window of in-flight
publishes (``eventstore/acks.py``), which is several times faster on the same connection.

A connection authenticates with the credentials in the environment unless given others
(``eventstore/credentials.py``); a publish the server refuses says so instead of timing out.

Server trouble is expected, not fatal: the client reconnects forever after the first
connect, and ``Bus.retry`` rides out what passes (``eventstore/retry.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import TypeVar

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoServersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, PubAck, RawStreamMsg
from nats.js.errors import (
    APIError,
    NotFoundError,
)

from contracts.codec import DecodeError, decode, encode
from contracts.envelope import PRODUCER, Envelope
from contracts.events import Event
from contracts.subjects import subject_for
from eventstore.acks import AckInbox
from eventstore.credentials import CREDS_ENV, USER_ENV, Credentials, Refusals, redact_url
from eventstore.errors import KeelError
from eventstore.retry import (
    Outage,
    StoreFull,
    Unacknowledged,
    backoff,
    describe,
    store_refusal,
    stream_of,
    transient,
    wait_out,
)
from eventstore.streams import REPLAY_PREFIX, STREAMS, ensure_streams, replay_stream

BULK_WINDOW = 512
ACK_TIMEOUT = 2.0  # seconds to wait for a window's acks before sending the rest again
GIVE_UP_AFTER = 90.0  # a window unacknowledged this long raises; within the 120 s dedup window
READ_BUFFER = 4096
LIMIT_TTL_S = 5.0  # how long an unlimited stream is taken to stay so before asking again
MSG_OVERHEAD = 64  # bytes a stored message takes beyond its subject, headers and data

log = logging.getLogger("keel.bus")

Message = tuple[str, bytes, dict[str, str]]
"""A publish ready to send: the full subject, the payload and the headers."""
T = TypeVar("T")


def server_list(url: str) -> list[str]:
    """``KEEL_NATS_URL`` may name every node of a cluster, comma-separated: the client
    fails over between them."""
    return [part.strip() for part in url.split(",") if part.strip()]


class Stored(msgspec.Struct, frozen=True):
    """An event read back from the log with where it lives."""

    stream: str
    seq: int
    subject: str
    envelope: Envelope
    event: Event
    producer: str = ""


class PublishTally(msgspec.Struct):
    stored: int = 0
    duplicates: int = 0


class Bus:
    """A connection; with a ``namespace`` every subject it publishes on is moved under
    ``rp.<namespace>.`` (a bus replay's private stream)."""

    def __init__(self, nc: Client, window: int = BULK_WINDOW, namespace: str = "") -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(publish_async_max_pending=window)
        self.prefix = f"{REPLAY_PREFIX}.{namespace}." if namespace else ""
        self.credentials = Credentials()
        self.refusals = Refusals()
        self.outage = Outage("")
        self.acks = AckInbox(nc, window)
        self._unlimited: dict[str, float] = {}

    @classmethod
    async def connect(
        cls,
        url: str,
        name: str = "keel",
        ensure: bool = True,
        namespace: str = "",
        credentials: Credentials | None = None,
    ) -> Bus:
        """Connect as ``credentials`` (default: from the environment, see ``Credentials``)."""
        creds = Credentials.from_env() if credentials is None else credentials
        refusals = Refusals()
        outage = Outage(url)

        async def reconnected() -> None:
            await outage.reconnected_to(nc.connected_url.geturl() if nc.connected_url else url)

        try:
            nc = await nats.connect(
                server_list(url),
                name=name,
                connect_timeout=2,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.2,
                error_cb=refusals.record,
                disconnected_cb=outage.disconnected,
                reconnected_cb=reconnected,
                **creds.options(),
            )
        except (NoServersError, OSError, TimeoutError) as exc:
            if refusals.about("authorization violation"):
                raise KeelError(
                    f"NATS at {redact_url(url)} refused {creds.describe()}: authorization "
                    f"violation (check {USER_ENV} and its password)"
                ) from None
            raise KeelError(
                f"cannot reach NATS at {redact_url(url)}: {exc or type(exc).__name__}"
            ) from None
        except ModuleNotFoundError as exc:
            raise KeelError(f"{CREDS_ENV} needs the {exc.name} package") from None
        # Fail fast on the first connect, then ride out server restarts indefinitely.
        nc.options["max_reconnect_attempts"] = -1
        bus = cls(nc, namespace=namespace)
        bus.credentials, bus.refusals, bus.outage = creds, refusals, outage
        try:
            if ensure:
                await ensure_streams(bus.js)
            if namespace:
                await ensure_streams(bus.js, (replay_stream(namespace),))
        except NatsTimeout as exc:
            await bus.close()
            specs = [*STREAMS, replay_stream(namespace)] if namespace else STREAMS
            calls = [f"$JS.API.STREAM.{op}.{s.name}" for s in specs for op in ("CREATE", "UPDATE")]
            raise bus.refused(calls, exc) from None
        return bus

    def refused(self, subjects: Iterable[str], exc: Exception) -> Exception:
        """A ``KeelError`` naming the subject the server refused this user to publish on,
        else ``exc``: a refused publish or API call only shows as a timeout otherwise."""
        for subject in subjects:
            if self.refusals.about(f'publish to "{subject}"'):
                return KeelError(
                    f"NATS denies {self.credentials.describe()} publishing to {subject} "
                    "(see the permissions in nats.conf)"
                )
        return exc

    async def close(self) -> None:
        """Flush and close. Not ``drain``: it would wait out idle pull requests, and every
        publish that matters was already acknowledged by then."""
        self.outage.closing = True
        if not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=2)
            with contextlib.suppress(Exception):
                await self.nc.close()

    def _headers(self, envelope: Envelope, producer: str) -> dict[str, str]:
        headers = envelope.headers()
        if producer:
            headers[PRODUCER] = producer
        return headers

    async def publish(self, event: Event, envelope: Envelope, producer: str = "") -> bool:
        """Store one event; False when the log already held it (same id)."""
        subject = self.prefix + subject_for(event)
        ack = await self.store(subject, encode(event), self._headers(envelope, producer))
        return not ack.duplicate

    async def store(
        self, subject: str, data: bytes, headers: dict[str, str], timeout: float | None = None
    ) -> PubAck:
        """One awaited publish on the full ``subject``: a refused subject is a ``KeelError``
        naming it, a storage limit a ``StoreFull``; other errors as nats-py raises them."""
        try:
            return await self.js.publish(subject, data, headers=headers, timeout=timeout)
        except NatsTimeout as exc:
            raise self.refused([subject], exc) from None
        except APIError as exc:
            reason = store_refusal(exc)
            if reason is None:
                raise
            raise StoreFull(stream_of(subject), reason) from None

    async def send(
        self, subject: str, data: bytes, headers: dict[str, str]
    ) -> asyncio.Future[PubAck]:
        """Start a publish on the full ``subject``; the future resolves to the ack or fails
        with the server's error (waits when the window is full)."""
        return await self.acks.publish(subject, data, headers)

    async def submit(self, event: Event, envelope: Envelope, producer: str = "") -> asyncio.Future:
        """Start a publish; the future resolves to the ack (waits when the window is full)."""
        return await self.send(
            self.prefix + subject_for(event), encode(event), self._headers(envelope, producer)
        )

    async def near_limit(self, messages: Sequence[Message], timeout: float = ACK_TIMEOUT) -> bool:
        """Whether ``messages`` (full subject, payload, headers) could reach a stream's byte
        limit. Near one they must go one at a time: in a pipelined window the store could
        refuse a message and still take a smaller one sent after it, out of order. A stream
        seen without a limit in the last few seconds costs nothing here; a server that does
        not answer within ``timeout`` is not near one (the publishes' retries ride it out)."""
        now = time.monotonic()
        sizes: dict[str, int] = {}
        for subject, data, headers in messages:
            stream = stream_of(subject)
            if now - self._unlimited.get(stream, -LIMIT_TTL_S) >= LIMIT_TTL_S:
                sizes[stream] = sizes.get(stream, 0) + message_size(subject, data, headers)
        if not sizes:
            return False
        try:
            async with asyncio.timeout(timeout):
                return await self._limits_reached(sizes, now)
        except Exception as exc:
            if not transient(exc):
                raise
            return False

    async def _limits_reached(self, sizes: dict[str, int], now: float) -> bool:
        for stream, size in sizes.items():
            try:
                info = await self.js.stream_info(stream)
            except NotFoundError:  # no stream stores it: the publish itself will say so
                self._unlimited[stream] = now
                continue
            limit = info.config.max_bytes or -1
            if limit <= 0:
                self._unlimited[stream] = now
            elif info.state.bytes + 2 * size >= limit:
                return True
        return False

    async def retry(
        self,
        what: str,
        call: Callable[[], Awaitable[T]],
        *,
        stop: asyncio.Event | None = None,
        on_full: Callable[[StoreFull], Awaitable[None]] | None = None,
    ) -> T:
        """``call`` until it succeeds, riding out transient trouble (and a full store when
        ``on_full`` is given: told each time it refuses) with capped exponential backoff.
        Once ``stop`` is set the next wait raises ``Interrupted`` (a call is always tried at
        least once, so a clean stop still commits); any other error propagates."""
        attempt = 0
        while True:
            try:
                result = await call()
            except StoreFull as exc:
                if on_full is None:
                    raise
                await on_full(exc)
            except Exception as exc:
                if not transient(exc):
                    raise
                self.outage.trouble(what, exc)
            else:
                self.outage.cleared()
                return result
            attempt += 1
            await wait_out(backoff(attempt), stop)

    async def publish_many(
        self,
        items: Iterable[tuple[Event, Envelope]],
        *,
        ack_timeout: float = ACK_TIMEOUT,
        give_up_after: float = GIVE_UP_AFTER,
        on_full: Callable[[StoreFull], Awaitable[None]] | None = None,
    ) -> PublishTally:
        """Store events in windows of in-flight publishes.

        Every wait is bounded: a publish not acknowledged within ``ack_timeout`` (the server
        died with it in flight, or is restarting) is sent again under the same message id,
        which JetStream de-duplicates, so nothing is stored twice. A window still not fully
        acknowledged after ``give_up_after`` seconds raises ``Unacknowledged``. A publish the
        store refuses for room raises ``StoreFull``, or with ``on_full`` is reported to it and
        sent again like an unacknowledged one.
        """
        tally = PublishTally()
        window: list[tuple[Event, Envelope]] = []
        for item in items:
            window.append(item)
            if len(window) >= BULK_WINDOW:
                await self._publish_window(window, tally, ack_timeout, give_up_after, on_full)
                window.clear()
        if window:
            await self._publish_window(window, tally, ack_timeout, give_up_after, on_full)
        return tally

    async def _publish_window(
        self,
        window: list[tuple[Event, Envelope]],
        tally: PublishTally,
        ack_timeout: float,
        give_up_after: float,
        on_full: Callable[[StoreFull], Awaitable[None]] | None,
    ) -> None:
        messages = [
            (self.prefix + subject_for(event), encode(event), envelope.headers())
            for event, envelope in window
        ]
        if await self.near_limit(messages, ack_timeout):
            for message in messages:
                store = functools.partial(self.store, *message, ack_timeout)
                _count([await self.retry("publish", store, on_full=on_full)], tally)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + give_up_after
        pending = messages
        attempt = 0
        last_error: BaseException | None = None
        while pending:
            attempt += 1
            futures: dict[asyncio.Future, Message] = {}
            unsent: list[Message] = []
            try:
                for n, message in enumerate(pending):
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        unsent = pending[n:]
                        break
                    try:
                        # Only a full window blocks a submit, so only that case is bounded
                        # (a timeout per message cost a third of bulk throughput).
                        submit = self.send(*message)
                        if self.acks.full:
                            async with asyncio.timeout(remaining):
                                fut = await submit
                        else:
                            fut = await submit
                    except Exception as exc:  # buffer full while reconnecting, stalled: resend
                        last_error = exc
                        unsent = pending[n:]
                        break
                    futures[fut] = message
                remaining = max(0.0, deadline - loop.time())
                if futures:
                    await asyncio.wait(futures, timeout=min(ack_timeout, remaining))
            finally:
                retry: list[Message] = []
                for fut, item in futures.items():
                    if fut.done() and not fut.cancelled() and fut.exception() is None:
                        _count([fut.result()], tally)
                        continue
                    if fut.done() and not fut.cancelled():
                        last_error = fut.exception()
                    else:
                        fut.cancel()  # frees its slot in the in-flight window
                    retry.append(item)
            pending = retry + unsent
            if not pending:
                self.outage.cleared()
                return
            full = store_refusal(last_error) if last_error is not None else None
            if full is not None:
                refused = StoreFull(stream_of(pending[0][0]), full)
                if on_full is None:
                    raise refused
                await on_full(refused)
            if loop.time() >= deadline:
                reason = describe(last_error) if last_error else "no ack"
                raise Unacknowledged(
                    f"NATS did not acknowledge {len(pending)} of {len(window)} publishes within "
                    f"{give_up_after:g}s ({attempt} attempts, last: {reason}); is the server up?"
                )
            if full is None:
                self.outage.trouble(
                    f"{len(pending)} of {len(window)} publishes not acknowledged, sending again "
                    "under the same ids",
                    last_error or TimeoutError("no ack"),
                )
            await asyncio.sleep(min(backoff(attempt), max(0.0, deadline - loop.time())))

    async def last_event(self, stream: str, subject: str) -> Stored | None:
        """The last event on ``subject`` that decodes; None when there is none.

        A stored message that does not decode (garbage published on the subject) is skipped:
        the read walks back to the previous one that does and says so in one log line, so one
        bad message cannot block a feed or a worker that resumes from its last event.
        """
        try:
            raw = await self.js.get_last_msg(stream, subject)
        except NotFoundError:
            return None
        found = _stored(stream, raw)
        if isinstance(found, Stored):
            return found
        bad_seq = raw.seq or 0
        previous = await self._last_decodable_before(stream, subject, bad_seq)
        log.warning(
            "%s seq %d on %s does not decode (%s): skipped, %s",
            stream,
            bad_seq,
            raw.subject or subject,
            found,
            f"using seq {previous.seq}" if previous else "no earlier event decodes",
        )
        return previous

    async def _last_decodable_before(self, stream: str, subject: str, before: int) -> Stored | None:
        """The last event on ``subject`` below sequence ``before`` that decodes: windows of
        sequences, widening backwards, each read forward with ``next_by_subj``."""
        hi, width = before, 64
        while hi > 1:
            lo = max(1, hi - width)
            best: Stored | None = None
            seq = lo
            while seq < hi:
                try:
                    raw = await self.js.get_msg(stream, seq, subject=subject, next=True)
                except NotFoundError:
                    break
                if raw.seq is None or raw.seq >= hi:
                    break
                found = _stored(stream, raw)
                if isinstance(found, Stored):
                    best = found
                seq = raw.seq + 1
            if best is not None:
                return best
            hi, width = lo, width * 4
        return None

    async def read(
        self,
        subject: str,
        stream: str,
        start_seq: int | None = None,
        since: datetime | None = None,
        stop_at_end: bool = True,
        end_seq: int | None = None,
        idle_timeout: float = 0.5,
    ) -> AsyncIterator[Stored | DeadRead]:
        """Events on ``subject`` in stream order through an ordered consumer.

        With ``stop_at_end`` the read ends at the stream's last message as of the call;
        otherwise it follows new messages until cancelled.
        """
        info = await self.js.stream_info(stream)
        last = min(end_seq, info.state.last_seq) if end_seq is not None else info.state.last_seq
        if stop_at_end and (info.state.messages == 0 or (start_seq or 1) > last):
            return
        if since is not None:
            policy, cfg = DeliverPolicy.BY_START_TIME, {"opt_start_time": since.isoformat()}
        elif start_seq:
            policy, cfg = DeliverPolicy.BY_START_SEQUENCE, {"opt_start_seq": start_seq}
        else:
            policy, cfg = DeliverPolicy.ALL, {}
        # A callback feeding a bounded queue reads about twice as fast as next_msg() per
        # message (bench/pipeline.py); the bound keeps memory flat on long reads.
        inbox: asyncio.Queue[Msg] = asyncio.Queue(maxsize=READ_BUFFER)
        sub = await self.js.subscribe(
            subject,
            stream=stream,
            ordered_consumer=True,
            deliver_policy=policy,
            config=ConsumerConfig(**cfg),
            cb=inbox.put,
        )
        try:
            while True:
                if inbox.empty():
                    try:
                        timeout = idle_timeout if stop_at_end else None
                        async with asyncio.timeout(timeout):
                            msg = await inbox.get()
                    except TimeoutError:
                        if stop_at_end:
                            return
                        continue
                else:
                    msg = inbox.get_nowait()
                seq = msg.metadata.sequence.stream
                yield read_message(msg, stream)
                if stop_at_end and seq >= last:
                    return
        finally:
            await sub.unsubscribe()


class DeadRead(msgspec.Struct, frozen=True):
    """A stored message that does not decode (kept in the log, reported, skipped)."""

    stream: str
    seq: int
    subject: str
    reason: str


def read_message(msg: Msg, stream: str) -> Stored | DeadRead:
    seq = msg.metadata.sequence.stream
    try:
        envelope = Envelope.from_headers(msg.headers)
        producer = (msg.headers or {}).get(PRODUCER, "")
        return Stored(stream, seq, msg.subject, envelope, decode(msg.data), producer)
    except (DecodeError, ValueError) as exc:
        return DeadRead(stream, seq, msg.subject, str(exc))


def _stored(stream: str, raw: RawStreamMsg) -> Stored | str:
    """A message got by sequence or subject, decoded; the reason when it does not decode."""
    try:
        envelope = Envelope.from_headers(raw.headers)
        return Stored(stream, raw.seq or 0, raw.subject or "", envelope, decode(raw.data or b""))
    except (DecodeError, ValueError) as exc:
        return str(exc)


def message_size(subject: str, data: bytes, headers: dict[str, str]) -> int:
    """About what the store counts against a byte limit for one message."""
    return (
        len(subject)
        + len(data)
        + sum(len(k) + len(v) + 4 for k, v in headers.items())
        + (MSG_OVERHEAD)
    )


def _count(acks: list, tally: PublishTally) -> None:
    for ack in acks:
        if ack.duplicate:
            tally.duplicates += 1
        else:
            tally.stored += 1
