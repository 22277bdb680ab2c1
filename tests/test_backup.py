"""``keel backup`` and ``keel restore`` on a recorded session, as a user runs them.

One demo session (five workers, a real nats-server) is recorded once for the module, then
given what a long-lived store also holds: an undecodable bar, messages aged out at the head
of SYSTEM and deleted inside it, a deleted last message, a bus replay's stream with one
message id stored twice, a venue gateway's order and fill, and the worker snapshots' KV
bucket (whose older revisions leave gaps). It is backed up, restored into a new directory, and the two stores are compared
message by message; a backtest recorded on the original replays to the same result hash on
the restored store.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
import pytest
from nats.js.api import StreamConfig

from contracts.envelope import Envelope
from contracts.venue_events import VenueAnswer, VenueOrder
from eventstore.backup import (
    MANIFEST,
    Manifest,
    RawMessage,
    check_dir,
    durable_consumers,
    read_stream,
    stream_info,
)
from eventstore.bus import Bus
from eventstore.errors import KeelError
from eventstore.model_store import BUCKET as MODEL_BUCKET
from eventstore.restore import check_files, load_manifest, restore_store, verify
from eventstore.server import URL_ENV, EmbeddedServer
from services.config import KeelConfig
from services.fleet import fleet_roles
from services.runtime.rebuild import rebuild_state
from services.runtime.role import durable_name
from tests.conftest import ROOT
from tests.test_cli import assert_one_error

STORE = ".keel"
MODEL_BYTES = bytes(range(256)) * 1000  # two chunks of the object store


def keel_here(cwd: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``keel`` in ``cwd`` with no ``KEEL_NATS_URL``: the directory's own embedded store."""
    env = {k: v for k, v in os.environ.items() if k != URL_ENV}
    return subprocess.run(
        [sys.executable, "-m", "cli.app", *args],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200", "PYTHONPATH": str(ROOT)},
        cwd=cwd,
        timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


async def _season(url: str) -> None:
    """What a store gathers besides a clean session (see the module docstring)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        await js.publish(
            "md.bar.sim.BTC-USDT.1m", b"\x00garbage", headers={"Nats-Msg-Id": "garbage-1"}
        )
        await js.purge_stream("SYSTEM", seq=3)
        await js.delete_msg("SYSTEM", 5)
        for i in range(3):
            await js.publish(f"ext.test.x{i}", f"not json {i}".encode())
        await js.delete_msg("EXTERNAL", 3)
        await js.add_stream(
            StreamConfig(name="REPLAY_bk", subjects=["rp.bk.>"], duplicate_window=0.1)
        )
        await js.publish("rp.bk.a", b"first", headers={"Nats-Msg-Id": "same"})
        await asyncio.sleep(0.3)
        await js.publish("rp.bk.a", b"again", headers={"Nats-Msg-Id": "same"})
        models = await js.create_object_store(MODEL_BUCKET)
        await models.put("model-1", MODEL_BYTES)
    finally:
        await nc.close()
    bus = await Bus.connect(url, name="season", ensure=False)
    try:
        for i, event in enumerate(VENUE_EVENTS):
            assert await bus.publish(event, Envelope.root(f"venue-{i}", event.ts))
    finally:
        await bus.close()


VENUE_EVENTS = (
    VenueOrder(
        ts=1,
        action="new",
        client_order_id="o-1",
        venue_client_id="6f1c2a9e-0b4d-5e8f-9a1b-2c3d4e5f6a7b",
        strategy="ma_cross",
        venue="binance",
        symbol="BTC/USDT",
        side="buy",
        qty=0.5,
    ),
    VenueAnswer(
        ts=2,
        kind="fill",
        venue="binance",
        symbol="BTC/USDT",
        client_order_id="o-1",
        venue_client_id="6f1c2a9e-0b4d-5e8f-9a1b-2c3d4e5f6a7b",
        source="stream",
        trade_id="991",
        fill_qty=0.5,
        fill_price=30_000.0,
        fee=0.0005,
        fee_currency="BTC",
    ),
)


async def _create_streams(url: str) -> None:
    await (await Bus.connect(url, name="test")).close()


def _run_on_store(store: Path, coro_fn) -> object:
    server = EmbeddedServer(store).start()
    try:
        return asyncio.run(coro_fn(server.url))
    finally:
        server.stop()


@dataclass(frozen=True)
class Session:
    original: Path
    restored: Path
    backup: Path
    run_dir: Path
    backup_out: str
    restore_out: str

    @property
    def manifest(self) -> Manifest:
        return msgspec.json.decode((self.backup / MANIFEST).read_bytes(), type=Manifest)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    root = tmp_path_factory.mktemp("backup")
    original, restored, backup = root / "original", root / "restored", root / "bk"
    original.mkdir()
    restored.mkdir()
    ok(keel_here(original, "demo", "--bars", "120", "--keep", str(original / STORE)))
    _run_on_store(original / STORE, _season)
    run_dir = root / "run"
    ok(keel_here(original, "backtest", "--strategy", "ma_cross", "--data", "MARKET", "--out", str(run_dir), "--json"))  # fmt: skip
    backup_out = ok(keel_here(original, "backup", str(backup)))
    _run_on_store(restored / STORE, _create_streams)  # Keel's streams there, never written
    restore_out = ok(keel_here(restored, "restore", str(backup)))
    yield Session(original, restored, backup, run_dir, backup_out, restore_out)


# --- the round trip -------------------------------------------------------------------------


def test_backup_and_restore_report_what_they_did(session: Session) -> None:
    manifest = session.manifest
    names = [s.name for s in manifest.streams]
    assert names[:9] == [
        "MARKET",
        "SIGNALS",
        "ORDERS",
        "EXECUTION",
        "PORTFOLIO",
        "GOVERNANCE",
        "EXTERNAL",
        "VENUE",
        "SYSTEM",
    ]
    assert {"KV_keel_snapshots", "REPLAY_bk", f"OBJ_{MODEL_BUCKET}"} <= set(names)
    assert f"backed up {manifest.messages:,} messages of {len(names)} streams" in session.backup_out
    assert "verified: every stream's message count, last sequence and digest" in " ".join(
        session.restore_out.split()
    )
    for stream in manifest.streams:
        assert (session.backup / stream.file).is_file()
    system = next(s for s in manifest.streams if s.name == "SYSTEM")
    assert system.first_seq == 3 and system.messages == system.last_seq - 3  # head and a hole
    external = next(s for s in manifest.streams if s.name == "EXTERNAL")
    assert (external.messages, external.last_seq) == (2, 3)  # the last one deleted
    venue = next(s for s in manifest.streams if s.name == "VENUE")
    assert venue.messages == len(VENUE_EVENTS)


async def _consumers(url: str, names: list[str]) -> dict[tuple[str, str], tuple[int, int]]:
    """Per durable consumer: its ack floor and how many messages it has yet to deliver."""
    nc = await nats.connect(url)
    try:
        out = {}
        for name in names:
            for consumer in await durable_consumers(nc, name) or ():
                info = await nc.jetstream().consumer_info(name, consumer.name)
                out[name, consumer.name] = (info.ack_floor.stream_seq, info.num_pending)
        return out
    finally:
        await nc.close()


async def _read_all(url: str, names: list[str]) -> dict[str, tuple[object, list[RawMessage]]]:
    nc = await nats.connect(url)
    try:
        out = {}
        for name in names:
            info = await stream_info(nc, name)
            assert info is not None, name
            config = msgspec.json.decode(info.config)
            out[name] = (
                (
                    info.state,
                    {k: v for k, v in config.items() if k not in ("metadata", "first_seq")},
                ),
                [msg async for msg in read_stream(nc, name, info.state.last_seq)],
            )
        return out
    finally:
        await nc.close()


def test_restored_store_holds_the_same_messages(session: Session) -> None:
    """Every stream: same state, config, sequences, subjects, headers (message ids) and
    payloads; and the messages were stored in the same order across streams."""
    names = [s.name for s in session.manifest.streams]
    before = _run_on_store(session.original / STORE, lambda url: _read_all(url, names))
    after = _run_on_store(session.restored / STORE, lambda url: _read_all(url, names))
    for name in names:
        (state_a, config_a), msgs_a = before[name]
        (state_b, config_b), msgs_b = after[name]
        assert state_a.messages == state_b.messages, name
        assert (state_a.first_seq, state_a.last_seq) == (state_b.first_seq, state_b.last_seq), name
        assert config_a == config_b, name
        strip = [(m.seq, m.subject, m.headers, m.data) for m in msgs_a]
        assert strip == [(m.seq, m.subject, m.headers, m.data) for m in msgs_b], name
        assert [m.msg_id for m in msgs_a] == [m.msg_id for m in msgs_b], name
    market = [m.data for m in after["MARKET"][1]]
    assert b"\x00garbage" in market
    replayed = [(m.msg_id, m.data) for m in after["REPLAY_bk"][1]]
    assert replayed == [("same", b"first"), ("same", b"again")]
    assert all(m.msg_id for name in ("MARKET", "ORDERS", "EXECUTION") for m in after[name][1])

    def store_order(side: dict) -> list[tuple[str, int]]:
        stamped = [(m.stored_ns, n, m.seq) for n, (_, msgs) in side.items() for m in msgs]
        return [(n, seq) for _, n, seq in sorted(stamped)]

    assert store_order(before) == store_order(after)


async def _rebuilt(url: str) -> dict[str, tuple[dict[str, int], int, bytes]]:
    """Every worker of the demo's fleet rebuilt from the log up to its ack floors."""
    bus = await Bus.connect(url, name="test", ensure=False)
    try:
        out = {}
        for role in fleet_roles(KeelConfig()):
            folded = await rebuild_state(bus, role.name, role.inputs, role.decider)
            out[role.name] = (folded.seqs, folded.processed, role.decider.snapshot())
        return out
    finally:
        await bus.close()


def test_workers_rebuild_the_same_state_on_the_restored_store(session: Session) -> None:
    """A rebuild merges a worker's inputs by store order: kept across streams, it folds
    to the same state as on the original."""
    before = _run_on_store(session.original / STORE, _rebuilt)
    after = _run_on_store(session.restored / STORE, _rebuilt)
    assert before == after
    assert all(processed > 0 for _, processed, _ in before.values())


def test_stored_models_come_back(session: Session) -> None:
    async def get(url: str) -> bytes:
        nc = await nats.connect(url)
        try:
            found = await (await nc.jetstream().object_store(MODEL_BUCKET)).get("model-1")
            return found.data or b""
        finally:
            await nc.close()

    assert _run_on_store(session.restored / STORE, get) == MODEL_BYTES


def test_durable_consumers_keep_their_ack_floors(session: Session) -> None:
    """Workers resume (or rebuild) on the restored store where they stood."""
    names = [s.name for s in session.manifest.streams]
    before = _run_on_store(session.original / STORE, lambda url: _consumers(url, names))
    after = _run_on_store(session.restored / STORE, lambda url: _consumers(url, names))
    assert before == after
    assert before[("MARKET", durable_name("risk", "MARKET"))][0] > 0
    assert sum(len(s.consumers) for s in session.manifest.streams) == len(before)


def test_restored_store_replays_to_the_same_result_hash(session: Session) -> None:
    """A backtest of the original's MARKET stream, replayed on the restored store."""
    recorded = json.loads((session.run_dir / "run.json").read_text())["result"]["result_hash"]
    result = keel_here(session.restored, "replay", str(session.run_dir), "--json")
    line = json.loads(ok(result).strip().splitlines()[-1])
    assert line["identical"] and line["result_hash"] == recorded
    assert line["bars"] > 0


def test_verify_notices_a_missing_message(session: Session, tmp_path: Path) -> None:
    store = tmp_path / STORE
    shutil.copytree(session.restored / STORE / "jetstream", store / "jetstream")

    async def check(url: str) -> None:
        nc = await nats.connect(url)
        try:
            await verify(nc, session.manifest)  # the copy verifies as restored
            await nc.jetstream().delete_msg("ORDERS", 2)
            with pytest.raises(KeelError, match="ORDERS"):
                await verify(nc, session.manifest)
        finally:
            await nc.close()

    _run_on_store(store, check)


# --- refusals: one line, a non-zero exit, nothing stored lost --------------------------------


def test_restore_refuses_a_store_with_data(session: Session) -> None:
    count = session.manifest.messages
    assert_one_error(
        keel_here(session.original, "restore", str(session.backup)),
        "already holds stream MARKET",
        "nothing was changed",
    )
    assert session.manifest.messages == count


def test_restore_refuses_an_attached_fleet(session: Session, tmp_path: Path) -> None:
    async def attempt(url: str) -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().add_stream(StreamConfig(name="MARKET", subjects=["md.>"]))
            await nc.jetstream().pull_subscribe("md.>", durable="marketwatch", stream="MARKET")
            with pytest.raises(KeelError, match="MARKET has 1 consumers"):
                await restore_store(nc, session.backup, session.manifest, lambda n: None)
            assert await stream_info(nc, "SIGNALS") is None  # nothing was created
        finally:
            await nc.close()

    _run_on_store(tmp_path / STORE, attempt)


def _copy(session: Session, tmp_path: Path) -> Path:
    copy = tmp_path / "bk"
    shutil.copytree(session.backup, copy)
    return copy


def _edit_manifest(path: Path, **changes: object) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    (path / MANIFEST).write_text(json.dumps(manifest | changes))


def test_restore_bad_directories(session: Session, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    assert_one_error(keel_here(work, "restore", str(tmp_path / "nope")), "no such directory")
    assert not (work / STORE).exists()  # refused before any store was made
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    other = _copy(session, tmp_path)
    for directory, edit, needle in (
        (a_file, {}, "is not a directory"),
        (tmp_path, {}, "holds no manifest.json"),
        (other, {"format": "something-else"}, "not a Keel backup manifest"),
        (other, {"format": "keel-backup", "version": 99}, "format version 99"),
        (other, {"version": 1, "streams": "many"}, "does not read as a Keel manifest"),
    ):
        if edit:
            _edit_manifest(other, **edit)
        with pytest.raises(KeelError, match=needle):
            load_manifest(directory)


def test_restore_bad_files_store_nothing(session: Session, tmp_path: Path) -> None:
    """Damaged files are found by the check that runs before anything is stored."""
    work = tmp_path / "work"
    work.mkdir()
    damaged = _copy(session, tmp_path)
    data = (damaged / "MARKET.parquet").read_bytes()
    (damaged / "MARKET.parquet").write_bytes(data[: len(data) // 2])
    assert_one_error(keel_here(work, "restore", str(damaged)), "MARKET.parquet", "Parquet")
    assert not (work / STORE).exists()
    manifest = load_manifest(damaged)
    shutil.copy(session.backup / "SIGNALS.parquet", damaged / "MARKET.parquet")
    with pytest.raises(KeelError, match=r"MARKET.parquet.*do not match the manifest"):
        check_files(damaged, manifest, lambda n: None)
    (damaged / "MARKET.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(KeelError, match="does not read as Parquet"):
        check_files(damaged, manifest, lambda n: None)
    (damaged / "MARKET.parquet").unlink()
    with pytest.raises(KeelError, match="missing from the backup"):
        check_files(damaged, manifest, lambda n: None)


def test_backup_refusals(session: Session, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    target = tmp_path / "bk"
    assert_one_error(keel_here(empty, "backup", str(target)), "no running fleet found")
    assert not (empty / STORE).exists() and not target.exists()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(KeelError, match="is not a directory"):
        check_dir(a_file)
    with pytest.raises(KeelError, match="is not empty"):
        check_dir(session.backup)
