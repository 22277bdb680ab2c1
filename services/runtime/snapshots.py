"""A worker's snapshot: its decider's state with the input positions that state covers.

A snapshot is a shortcut through the log, never the truth. It records the decider's
``snapshot_version``; one at another version, or one that does not decode at its version,
is never reinterpreted: the worker stops with one line naming the way back (rebuilding the
state from the log) and leaves the stored snapshot as it is.
"""

from __future__ import annotations

import msgspec
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from eventstore.bus import Bus
from eventstore.errors import KeelError
from eventstore.streams import StoreSettings
from services.runtime.decider import Decider

SNAPSHOT_BUCKET = "keel_snapshots"
REMEDY = (
    "start the worker with --rebuild to rebuild its state from the log "
    "(the stored snapshot is left as it is)"
)


class Snapshot(msgspec.Struct, frozen=True):
    """``seqs``: per input stream, the last sequence ``state`` has applied."""

    version: int
    seqs: dict[str, int]
    state: bytes
    processed: int = 0


async def snapshot_bucket(bus: Bus) -> KeyValue:
    try:
        return await bus.js.key_value(SNAPSHOT_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        return await bus.js.create_key_value(
            KeyValueConfig(
                bucket=SNAPSHOT_BUCKET,
                history=1,
                storage=StorageType.FILE,
                replicas=StoreSettings.from_env().replicas,
            )
        )


def encode_snapshot(decider: Decider, seqs: dict[str, int], processed: int) -> bytes:
    return msgspec.msgpack.encode(
        Snapshot(decider.snapshot_version, dict(seqs), decider.snapshot(), processed)
    )


async def restore_snapshot(kv: KeyValue, worker: str, decider: Decider) -> Snapshot | None:
    """The worker's stored snapshot, already restored into ``decider``; ``None`` if it has
    none. Raises ``KeelError`` (one line) for a snapshot this build cannot read."""
    try:
        entry = await kv.get(worker)
    except KeyNotFoundError:
        return None
    if not entry.value:
        return None
    expected = decider.snapshot_version
    where = f"{worker}: its snapshot (KV bucket {SNAPSHOT_BUCKET}, key {worker})"
    try:
        snap = msgspec.msgpack.decode(entry.value, type=Snapshot)
    except msgspec.DecodeError as exc:
        raise KeelError(
            f"{where} does not decode, expected version {expected} ({_one_line(exc)}); {REMEDY}"
        ) from exc
    if snap.version != expected:
        raise KeelError(
            f"{where} is at version {snap.version}, this build reads version {expected}; {REMEDY}"
        )
    try:
        decider.restore(snap.state)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise KeelError(
            f"{where} does not decode at version {expected} ({_one_line(exc)}); {REMEDY}"
        ) from exc
    return snap


def _one_line(exc: Exception) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())
