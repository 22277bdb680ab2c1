"""``keel backup``: every Keel stream exported as stored, one Parquet file per stream.

A backup holds raw messages, not decoded events: stream sequence, subject, headers (with
``Nats-Msg-Id``), payload bytes and the time the server stored each one, so messages that
do not decode (what dead letters report) come back too. Each stream is read up to the last
sequence it held when the backup began: the streams' positions are taken together, before
any is read. ``manifest.json`` (stream configs, sequences, counts, a content digest per
stream) is written last: a directory without it is an unfinished backup, which
``keel restore`` refuses. Durable consumers are kept with their ack floors, so a worker
resumes (or rebuilds, ``--rebuild``) where it stood.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
from nats.aio.client import Client
from nats.aio.msg import Msg

from eventstore.errors import KeelError
from eventstore.log_reader import read_until
from eventstore.streams import STREAM_BY_NAME, replay_stream

FORMAT = "keel-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ROW_GROUP = 20_000
IDLE_S = 10.0
"""A read that gets no message for this long while the stream still holds more has stalled."""

SCHEMA = pa.schema(
    [
        pa.field("seq", pa.uint64(), nullable=False),
        pa.field("subject", pa.string(), nullable=False),
        pa.field("msg_id", pa.string()),
        pa.field("headers", pa.string()),
        pa.field("data", pa.binary(), nullable=False),
        pa.field("stored_ns", pa.int64(), nullable=False),
    ]
)
"""``headers``: the message's headers as a JSON object, null when it has none; ``msg_id``
repeats its ``Nats-Msg-Id`` for queries; ``stored_ns``: when the server stored it."""

Progress = Callable[[int], None]
Reply = TypeVar("Reply")


class RawMessage(msgspec.Struct, frozen=True):
    """One stored message, byte for byte as the stream holds it."""

    seq: int
    subject: str
    headers: tuple[tuple[str, str], ...]
    data: bytes
    stored_ns: int

    @property
    def msg_id(self) -> str | None:
        return next((v for k, v in self.headers if k == "Nats-Msg-Id"), None)


class ConsumerBackup(msgspec.Struct, frozen=True):
    """A durable consumer: its config as the server states it, and the stream sequence up
    to which everything was acknowledged."""

    name: str
    config: msgspec.Raw
    ack_floor: int


class StreamBackup(msgspec.Struct, frozen=True):
    """``first_seq``: the first message's sequence (``last_seq + 1`` when none);
    ``last_seq``: the stream's last sequence when the backup began, gaps included."""

    name: str
    file: str
    config: msgspec.Raw
    first_seq: int
    last_seq: int
    messages: int
    payload_bytes: int
    digest: str
    consumers: tuple[ConsumerBackup, ...] = ()


class Manifest(msgspec.Struct, frozen=True):
    format: str
    version: int
    keel_version: str
    server_version: str
    created: str
    streams: tuple[StreamBackup, ...]

    @property
    def messages(self) -> int:
        return sum(s.messages for s in self.streams)


class StreamDigest:
    """sha256 over each message's sequence, subject, sorted headers and payload: equal
    digests mean the same messages at the same sequences (store times excluded)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.messages = 0
        self.payload_bytes = 0
        self.first_seq = 0

    def add(self, msg: RawMessage) -> None:
        self._hash.update(
            msgspec.msgpack.encode((msg.seq, msg.subject, sorted(msg.headers), msg.data))
        )
        if not self.messages:
            self.first_seq = msg.seq
        self.messages += 1
        self.payload_bytes += len(msg.data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


# --- the JetStream API, raw: configs kept exactly as the server states them ---------------


class ApiError(msgspec.Struct, frozen=True):
    code: int = 0
    err_code: int = 0
    description: str = ""


class StreamState(msgspec.Struct, frozen=True):
    messages: int = 0
    first_seq: int = 0
    last_seq: int = 0
    consumer_count: int = 0


class StreamInfoReply(msgspec.Struct, frozen=True):
    config: msgspec.Raw = msgspec.Raw(b"null")
    state: StreamState = StreamState()
    error: ApiError | None = None


class StreamNamesReply(msgspec.Struct, frozen=True):
    streams: list[str] | None = None
    total: int = 0
    limit: int = 0
    error: ApiError | None = None


class SequencePair(msgspec.Struct, frozen=True):
    consumer_seq: int = 0
    stream_seq: int = 0


class ConsumerInfoReply(msgspec.Struct, frozen=True):
    name: str = ""
    config: msgspec.Raw = msgspec.Raw(b"null")
    ack_floor: SequencePair = SequencePair()
    error: ApiError | None = None


class ConsumerListReply(msgspec.Struct, frozen=True):
    consumers: list[ConsumerInfoReply] | None = None
    total: int = 0
    error: ApiError | None = None


class _Durable(msgspec.Struct, frozen=True):
    durable_name: str = ""


STREAM_NOT_FOUND = 10059
REPLAY_STREAM = replay_stream("").name


async def api_request(nc: Client, op: str, payload: bytes, kind: type[Reply]) -> Reply:
    """One ``$JS.API`` request decoded into ``kind``; errors stay in its ``error`` field."""
    try:
        reply = await nc.request(f"$JS.API.{op}", payload, timeout=10)
    except Exception as exc:
        raise KeelError(f"JetStream API {op} failed: {exc or type(exc).__name__}") from None
    return msgspec.json.decode(reply.data, type=kind)


async def stream_info(nc: Client, name: str) -> StreamInfoReply | None:
    """The stream's config and state; ``None`` when there is no such stream."""
    info = await api_request(nc, f"STREAM.INFO.{name}", b"", StreamInfoReply)
    if info.error is not None:
        if info.error.err_code == STREAM_NOT_FOUND:
            return None
        raise KeelError(f"stream {name}: {info.error.description}")
    return info


async def stream_names(nc: Client) -> list[str]:
    names: list[str] = []
    while True:
        page = await api_request(
            nc, "STREAM.NAMES", msgspec.json.encode({"offset": len(names)}), StreamNamesReply
        )
        if page.error is not None:
            raise KeelError(f"listing streams: {page.error.description}")
        names += page.streams or []
        if not page.streams or len(names) >= page.total:
            return names


async def durable_consumers(nc: Client, stream: str) -> tuple[ConsumerBackup, ...] | None:
    """The stream's durable consumers; ``None`` when there is no such stream."""
    found: list[ConsumerInfoReply] = []
    while True:
        body = msgspec.json.encode({"offset": len(found)})
        page = await api_request(nc, f"CONSUMER.LIST.{stream}", body, ConsumerListReply)
        if page.error is not None and page.error.err_code == STREAM_NOT_FOUND:
            return None
        if page.error is not None:
            raise KeelError(f"listing the consumers of {stream}: {page.error.description}")
        found += page.consumers or []
        if not page.consumers or len(found) >= page.total:
            break
    return tuple(
        ConsumerBackup(c.name, c.config, c.ack_floor.stream_seq)
        for c in sorted(found, key=lambda c: c.name)
        if msgspec.json.decode(c.config, type=_Durable).durable_name
    )


def keel_streams(names: Iterable[str], buckets: Iterable[str]) -> list[str]:
    """The streams that are Keel's: the event log's, bus replays' and the given buckets'
    (KV, object store), in the log's order first, then by name."""
    wanted = set(buckets)
    order = {name: i for i, name in enumerate(STREAM_BY_NAME)}
    mine = [n for n in names if n in order or n.startswith(REPLAY_STREAM) or n in wanted]
    return sorted(mine, key=lambda n: (order.get(n, len(order)), n))


# --- reading a stream ---------------------------------------------------------------------


def stored_ns(reply: str) -> int:
    """The store time from a JetStream delivery's reply subject, to the nanosecond (the
    client's parsed metadata keeps microseconds): 9 tokens, or 12 with domain and account."""
    tokens = reply.split(".")
    return int(tokens[7] if len(tokens) == 9 else tokens[9])


def raw_message(msg: Msg) -> RawMessage:
    return RawMessage(
        seq=msg.metadata.sequence.stream,
        subject=msg.subject,
        headers=tuple((msg.headers or {}).items()),
        data=msg.data,
        stored_ns=stored_ns(msg.reply),
    )


async def read_stream(nc: Client, stream: str, end_seq: int) -> AsyncIterator[RawMessage]:
    """Every message of ``stream`` up to ``end_seq``, in sequence order, on all its subjects."""
    stalled = f"reading {stream} stalled: no message for {IDLE_S:.0f}s before sequence {end_seq}"
    async for msg in read_until(nc.jetstream(), stream, end_seq, idle_s=IDLE_S, stalled=stalled):
        yield raw_message(msg)


# --- Parquet ------------------------------------------------------------------------------


class ParquetSink:
    """Rows buffered and written a row group at a time, so memory stays flat."""

    def __init__(self, path: Path) -> None:
        self._writer = pq.ParquetWriter(path, SCHEMA, compression="zstd")
        self._rows: list[RawMessage] = []

    def add(self, msg: RawMessage) -> None:
        self._rows.append(msg)
        if len(self._rows) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        rows = self._rows
        if not rows:
            return
        encode = msgspec.json.encode
        columns = {
            "seq": [m.seq for m in rows],
            "subject": [m.subject for m in rows],
            "msg_id": [m.msg_id for m in rows],
            "headers": [encode(dict(m.headers)).decode() if m.headers else None for m in rows],
            "data": [m.data for m in rows],
            "stored_ns": [m.stored_ns for m in rows],
        }
        self._writer.write_table(pa.Table.from_pydict(columns, schema=SCHEMA))
        rows.clear()

    def close(self) -> None:
        self._flush()
        self._writer.close()


def _headers(text: str | None) -> tuple[tuple[str, str], ...]:
    if text is None:
        return ()
    return tuple(msgspec.json.decode(text, type=dict[str, str]).items())


def read_parquet(path: Path) -> Iterator[RawMessage]:
    """A backup file's messages in order; ``KeelError`` naming the file when it does not
    read as one (missing, truncated, corrupt, other columns)."""
    try:
        handle = pq.ParquetFile(path)
        if not handle.schema_arrow.equals(SCHEMA):
            raise KeelError(f"{path}: not a Keel backup file (its columns differ)")
        for batch in handle.iter_batches(batch_size=ROW_GROUP):
            cols = batch.to_pydict()
            for seq, subject, headers, data, stored in zip(
                cols["seq"],
                cols["subject"],
                cols["headers"],
                cols["data"],
                cols["stored_ns"],
                strict=True,
            ):
                yield RawMessage(seq, subject, _headers(headers), data, stored)
    except (OSError, pa.ArrowException, msgspec.DecodeError, ValueError, TypeError) as exc:
        raise KeelError(f"{path}: does not read as Parquet ({_one_line(exc)})") from None


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --- the backup ---------------------------------------------------------------------------


def check_dir(directory: Path) -> None:
    """A backup goes into a new or empty directory: an old backup is never overwritten."""
    if directory.exists() and not directory.is_dir():
        raise KeelError(f"{directory} is not a directory")
    if directory.is_dir() and any(directory.iterdir()):
        raise KeelError(f"{directory} is not empty: give a new or empty directory for the backup")


def prepare_dir(directory: Path) -> None:
    check_dir(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KeelError(f"cannot create {directory}: {exc.strerror or exc}") from None


async def backup_store(
    nc: Client, directory: Path, buckets: Iterable[str], progress: Progress
) -> Manifest:
    """Write every Keel stream of the server ``nc`` reaches into ``directory``."""
    prepare_dir(directory)
    names = keel_streams(await stream_names(nc), buckets)
    # Consumers first: an ack floor taken before the stream's last sequence is within it.
    consumers = {name: await durable_consumers(nc, name) for name in names}
    infos = {name: await stream_info(nc, name) for name in names}
    streams = []
    for name, info in infos.items():
        found = consumers[name]
        if info is None or found is None:  # deleted since it was listed (a finished replay)
            continue
        backup = await _backup_stream(nc, directory, name, info, progress)
        streams.append(msgspec.structs.replace(backup, consumers=found))
    manifest = Manifest(
        format=FORMAT,
        version=FORMAT_VERSION,
        keel_version=importlib.metadata.version("keel"),
        server_version=_version(nc),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        streams=tuple(streams),
    )
    (directory / MANIFEST).write_bytes(msgspec.json.format(msgspec.json.encode(manifest)))
    return manifest


def _version(nc: Client) -> str:
    v = nc.connected_server_version
    return f"{v.major}.{v.minor}.{v.patch}"


async def _backup_stream(
    nc: Client, directory: Path, name: str, info: StreamInfoReply, progress: Progress
) -> StreamBackup:
    last = info.state.last_seq
    file = f"{name}.parquet"
    digest = StreamDigest()
    sink = ParquetSink(directory / file)
    try:
        async for msg in read_stream(nc, name, last):
            sink.add(msg)
            digest.add(msg)
            progress(1)
    finally:
        sink.close()
    return StreamBackup(
        name=name,
        file=file,
        config=info.config,
        first_seq=digest.first_seq or last + 1,
        last_seq=last,
        messages=digest.messages,
        payload_bytes=digest.payload_bytes,
        digest=digest.hexdigest(),
    )
