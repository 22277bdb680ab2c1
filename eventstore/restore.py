"""``keel restore``: a backup published back into a store that holds no Keel data.

Every file is checked against the manifest (columns, order, count, digest) before anything
is stored. Each stream is created with its recorded config starting at its recorded first
sequence; every message is published with its own subject, headers (``Nats-Msg-Id``
included) and payload, and its acknowledged sequence must equal the recorded one. A gap in
the recorded sequences (messages deleted or replaced, as a KV bucket's older revisions are)
is filled with placeholder messages on a subject of their own, purged at the end, so every
later message keeps its number. ``Nats-Expected-Last-Sequence`` is not used for this: the
server stores that header with the message, which would then differ from the backup.

Messages go back in the order the server first stored them across streams (their recorded
store times), so the relative store order that a worker's rebuild merges by
(``services/runtime/rebuild.py``) is the same as the original's; the times themselves are
the restore's. Durable consumers are created at their recorded ack floors (delivering from
the next sequence), so workers resume or ``--rebuild`` where they stood. While restoring,
each stream's duplicate window is the server's minimum (100 ms), so an id the original
stored twice (more than its window apart) is stored twice again; the recorded config is
applied at the end. A failure removes the streams the restore created: the store is left
as it was found.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
from nats.aio.client import Client
from nats.js.errors import APIError

from eventstore.backup import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    ApiError,
    ConsumerBackup,
    ConsumerInfoReply,
    Manifest,
    Progress,
    RawMessage,
    StreamBackup,
    StreamDigest,
    api_request,
    read_parquet,
    read_stream,
    stream_info,
)
from eventstore.errors import KeelError
from eventstore.streams import STREAM_BY_NAME, StoreSettings

WINDOW = 512
ACK_TIMEOUT_S = 30.0
RESTORE_DUPLICATE_WINDOW_NS = 100_000_000
"""The server's minimum duplicate window; an id repeated sooner than this is held back."""
ID_MEMORY_S = 1.0
GAP_TOKEN = "_keel_restore_gap"


class Verified(msgspec.Struct, frozen=True):
    streams: int
    messages: int
    consumers: int


class _Reply(msgspec.Struct, frozen=True):
    error: ApiError | None = None


# --- the backup directory -----------------------------------------------------------------


class _FormatProbe(msgspec.Struct, frozen=True):
    format: str = ""
    version: int = 0


def load_manifest(directory: Path) -> Manifest:
    if not directory.exists():
        raise KeelError(f"{directory}: no such directory")
    if not directory.is_dir():
        raise KeelError(f"{directory} is not a directory")
    path = directory / MANIFEST
    if not path.is_file():
        raise KeelError(f"{directory} holds no {MANIFEST}: not a Keel backup, or an unfinished one")
    raw = path.read_bytes()
    try:
        probe = msgspec.json.decode(raw, type=_FormatProbe)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise KeelError(f"{path} does not read as a Keel manifest ({exc})") from None
    if probe.format != FORMAT:
        raise KeelError(f"{path} is not a Keel backup manifest (format {probe.format!r})")
    if probe.version != FORMAT_VERSION:
        raise KeelError(
            f"{path} is backup format version {probe.version}; this Keel reads version "
            f"{FORMAT_VERSION}"
        )
    try:
        return msgspec.json.decode(raw, type=Manifest)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise KeelError(f"{path} does not read as a Keel manifest ({exc})") from None


def _file(directory: Path, stream: StreamBackup) -> Path:
    path = directory / stream.file
    if Path(stream.file).name != stream.file or not path.is_file():
        raise KeelError(f"{path}: missing from the backup ({stream.name})")
    return path


def check_files(directory: Path, manifest: Manifest, progress: Progress) -> None:
    """Read every file through once: each must hold what the manifest says, in order."""
    for stream in manifest.streams:
        path = _file(directory, stream)
        digest = StreamDigest()
        previous = stream.first_seq - 1
        for msg in read_parquet(path):
            if not previous < msg.seq <= stream.last_seq:
                raise KeelError(
                    f"{path}: sequence {msg.seq} out of order or outside "
                    f"{stream.first_seq}..{stream.last_seq}"
                )
            previous = msg.seq
            digest.add(msg)
            progress(1)
        if (digest.messages, digest.hexdigest()) != (stream.messages, stream.digest):
            raise KeelError(
                f"{path}: {digest.messages} messages that do not match the manifest's "
                f"{stream.messages} (digest differs): the file is damaged or from another backup"
            )


# --- the target store ---------------------------------------------------------------------


async def _check_target(nc: Client, manifest: Manifest) -> list[str]:
    """Streams to clear first (Keel's, created but never written); refuses data or a fleet."""
    empty = []
    for name in dict.fromkeys([*STREAM_BY_NAME, *(s.name for s in manifest.streams)]):
        info = await stream_info(nc, name)
        if info is None:
            continue
        state = info.state
        if state.messages or state.last_seq:
            raise KeelError(
                f"the store already holds stream {name} ({state.messages:,} messages, last "
                f"sequence {state.last_seq:,}): restore only into a store with no Keel data "
                "(a new directory); nothing was changed"
            )
        if state.consumer_count:
            raise KeelError(
                f"stream {name} has {state.consumer_count} consumers (a fleet is attached): "
                "stop it before restoring; nothing was changed"
            )
        empty.append(name)
    return empty


def _config(stream: StreamBackup, *, restoring: bool) -> dict[str, object]:
    """The recorded config with this deployment's replica count and, while restoring, the
    stream open to placeholders (minimum duplicate window, deletes and purges allowed)."""
    config = msgspec.json.decode(stream.config, type=dict[str, object])
    metadata = config.get("metadata")
    if isinstance(metadata, dict):
        config["metadata"] = {k: v for k, v in metadata.items() if not k.startswith("_nats.")}
    config["num_replicas"] = StoreSettings.from_env().replicas
    if stream.first_seq > 1:  # a stream never written to reports 0 unless given one
        config["first_seq"] = stream.first_seq
    if restoring:
        config |= {
            "duplicate_window": RESTORE_DUPLICATE_WINDOW_NS,
            "deny_delete": False,
            "deny_purge": False,
            "sealed": False,
        }
    return config


def consumer_config(consumer: ConsumerBackup) -> dict[str, object]:
    """The recorded config, starting after the ack floor: the new consumer's floor is the
    recorded one, and it delivers what was not yet acknowledged."""
    config = msgspec.json.decode(consumer.config, type=dict[str, object])
    config.pop("metadata", None)
    if consumer.ack_floor:
        config.pop("opt_start_time", None)
        config |= {"deliver_policy": "by_start_sequence", "opt_start_seq": consumer.ack_floor + 1}
    return config


async def _api(nc: Client, op: str, body: object) -> None:
    reply = await api_request(nc, op, msgspec.json.encode(body), _Reply)
    if reply.error is not None:
        raise KeelError(f"{op}: {reply.error.description}")


def gap_subject(stream: StreamBackup) -> str:
    """A subject of the stream no message has: its first wildcard subject with the wildcard
    tokens replaced by ``_keel_restore_gap``."""
    config = msgspec.json.decode(stream.config, type=dict[str, object])
    subjects = config.get("subjects") or []
    for subject in subjects if isinstance(subjects, list) else []:
        tokens = str(subject).split(".")
        if "*" in tokens or ">" in tokens:
            return ".".join(GAP_TOKEN if t in ("*", ">") else t for t in tokens)
    raise KeelError(f"{stream.name}: cannot restore its sequence gaps (no wildcard subject)")


# --- publishing ---------------------------------------------------------------------------


class _Publisher:
    """Publishes in the given order with a window of in-flight messages; the window is
    drained whenever the stream changes, so the store order across streams is the order
    given, and each acknowledged sequence is checked against the recorded one."""

    def __init__(self, nc: Client, progress: Progress) -> None:
        self.js = nc.jetstream(publish_async_max_pending=WINDOW)
        self.progress = progress
        self.next_seq: dict[str, int] = {}
        self.gap_seqs: dict[str, int] = {}
        self._pending: list[tuple[asyncio.Future, str, int, bool]] = []
        self._stream = ""
        self._ids: tuple[dict[tuple[str, str], None], dict[tuple[str, str], None]] = ({}, {})
        self._ids_since = time.monotonic()

    async def message(self, stream: StreamBackup, msg: RawMessage, gap: str) -> None:
        await self.fill(stream, msg.seq - 1, gap)
        key = (stream.name, msg.msg_id or "")
        if msg.msg_id is not None and self._seen(key):
            await self.drain()
            await asyncio.sleep(RESTORE_DUPLICATE_WINDOW_NS / 1e9 * 1.5)
            self._ids = ({}, {})
        self._ids[0][key] = None
        await self._send(stream.name, msg.subject, msg.data, dict(msg.headers) or None, True)

    async def fill(self, stream: StreamBackup, up_to: int, gap: str) -> None:
        """Placeholders up to sequence ``up_to``, so the next message gets its own."""
        while self.next_seq[stream.name] <= up_to:
            self.gap_seqs[stream.name] = self.gap_seqs.get(stream.name, 0) + 1
            await self._send(stream.name, gap, b"", None, False)

    def _seen(self, key: tuple[str, str]) -> bool:
        if time.monotonic() - self._ids_since > ID_MEMORY_S:
            self._ids = ({}, self._ids[0])
            self._ids_since = time.monotonic()
        return key in self._ids[0] or key in self._ids[1]

    async def _send(
        self, stream: str, subject: str, data: bytes, headers: dict | None, real: bool
    ) -> None:
        if stream != self._stream or len(self._pending) >= WINDOW:
            await self.drain()
            self._stream = stream
        seq = self.next_seq[stream]
        self.next_seq[stream] = seq + 1
        future = await self.js.publish_async(subject, data, headers=headers)
        self._pending.append((future, stream, seq, real))

    async def drain(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        futures = [p[0] for p in pending]
        try:
            async with asyncio.timeout(ACK_TIMEOUT_S):
                acks = await asyncio.gather(*futures)
        except TimeoutError:
            raise KeelError(f"the server did not acknowledge within {ACK_TIMEOUT_S:.0f}s") from None
        except APIError as exc:
            raise KeelError(f"the server refused a message: {exc.description}") from None
        for ack, (_, stream, seq, real) in zip(acks, pending, strict=True):
            if ack.stream != stream or ack.seq != seq or ack.duplicate:
                raise KeelError(
                    f"{stream}: sequence {seq} came back as {ack.stream} {ack.seq}"
                    + (" (a duplicate)" if ack.duplicate else "")
                    + ": something else published into the store during the restore"
                )
            if real:
                self.progress(1)


def _merged(directory: Path, manifest: Manifest) -> Iterator[tuple[StreamBackup, RawMessage]]:
    """All messages in the order the server first stored them; equal times keep the
    manifest's stream order, and each stream keeps its own order regardless."""
    readers = [_keyed(directory, i, stream) for i, stream in enumerate(manifest.streams)]
    for _, _, _, stream, msg in heapq.merge(*readers, key=lambda item: item[:3]):
        yield stream, msg


def _keyed(
    directory: Path, index: int, stream: StreamBackup
) -> Iterator[tuple[int, int, int, StreamBackup, RawMessage]]:
    for msg in read_parquet(_file(directory, stream)):
        yield msg.stored_ns, index, msg.seq, stream, msg


async def restore_store(
    nc: Client, directory: Path, manifest: Manifest, progress: Progress
) -> Verified:
    """Publish the backup into the store ``nc`` reaches, then verify it (``verify``)."""
    empty = await _check_target(nc, manifest)
    js = nc.jetstream()
    for name in empty:
        await js.delete_stream(name)
    created: list[str] = []
    try:
        for stream in manifest.streams:
            await _api(nc, f"STREAM.CREATE.{stream.name}", _config(stream, restoring=True))
            created.append(stream.name)
        await _publish(nc, directory, manifest, progress)
        for stream in manifest.streams:
            await _api(nc, f"STREAM.UPDATE.{stream.name}", _config(stream, restoring=False))
            for consumer in stream.consumers:
                body = {"stream_name": stream.name, "config": consumer_config(consumer)}
                await _api(nc, f"CONSUMER.CREATE.{stream.name}.{consumer.name}", body)
        return await verify(nc, manifest)
    except BaseException:
        for name in created:
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
        raise


async def _publish(nc: Client, directory: Path, manifest: Manifest, progress: Progress) -> None:
    publisher = _Publisher(nc, progress)
    gaps: dict[str, str] = {}
    for stream in manifest.streams:
        publisher.next_seq[stream.name] = stream.first_seq
        if stream.last_seq - stream.first_seq + 1 > stream.messages:
            gaps[stream.name] = gap_subject(stream)
    for stream, msg in _merged(directory, manifest):
        await publisher.message(stream, msg, gaps.get(stream.name, ""))
    for stream in manifest.streams:
        await publisher.fill(stream, stream.last_seq, gaps.get(stream.name, ""))
    await publisher.drain()
    js = nc.jetstream()
    for name in publisher.gap_seqs:
        await js.purge_stream(name, subject=gaps[name])


async def verify(nc: Client, manifest: Manifest) -> Verified:
    """Read every restored stream back: its messages, sequences and digest must be the
    manifest's."""
    for stream in manifest.streams:
        info = await stream_info(nc, stream.name)
        digest = StreamDigest()
        if info is not None:
            async for msg in read_stream(nc, stream.name, stream.last_seq):
                digest.add(msg)
        last = info.state.last_seq if info is not None else -1
        found = (digest.messages, last, digest.hexdigest())
        if found != (stream.messages, stream.last_seq, stream.digest):
            raise KeelError(
                f"{stream.name}: restored {digest.messages:,} messages up to sequence {last:,}, "
                f"the backup holds {stream.messages:,} up to {stream.last_seq:,}"
                + ("" if digest.hexdigest() == stream.digest else " (digest differs)")
            )
        for consumer in stream.consumers:
            info = await api_request(
                nc, f"CONSUMER.INFO.{stream.name}.{consumer.name}", b"", ConsumerInfoReply
            )
            if info.error is not None or info.ack_floor.stream_seq != consumer.ack_floor:
                raise KeelError(
                    f"{stream.name}: consumer {consumer.name} is not at its recorded ack floor "
                    f"{consumer.ack_floor:,}"
                )
    consumers = sum(len(s.consumers) for s in manifest.streams)
    return Verified(len(manifest.streams), manifest.messages, consumers)
