"""Malformed messages through a real nats-server to the real workers of the default fleet,
and the accounting of what became of each: the code path of ``bench/fuzz.py`` and of
``tests/test_fuzz_inputs.py``.

Every input subject pattern of every worker gets ``count`` messages from
``tests/malformed.py``. Each stored message must give exactly one ``DeadLetter`` per worker
that consumes its subject, keyed by (worker, stream, stream sequence), whose reason carries
the refusal the contracts give; no worker may publish anything else for it (the streams'
counts, heartbeats aside, grow by the fuzz messages alone), and no worker may exit or
restart. The fleet runs either in this process (``InProcessFleet``: ``Worker`` objects on
their own connections) or as ``keel run <role>`` processes (``ProcessFleet``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Protocol

import msgspec

from contracts.envelope import bar_envelope
from contracts.events import Bar
from contracts.subjects import subject_matches
from contracts.system_events import DeadLetter, Heartbeat
from eventstore.bus import Bus, Stored
from eventstore.lag import wait_drained
from eventstore.server import URL_ENV
from eventstore.streams import STREAMS
from services.config import KeelConfig
from services.fleet import fleet_roles
from services.runtime.role import Role, durable_name
from services.runtime.worker import Worker, WorkerOptions
from tests.malformed import Generator, Malformed

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 512


class SubjectRow(msgspec.Struct):
    """What became of the messages sent on one input pattern."""

    pattern: str
    stream: str
    workers: list[str]
    sent: int = 0
    letters: int = 0
    missing: int = 0
    duplicates: int = 0
    empty_reasons: int = 0
    wrong_reasons: int = 0
    kinds: dict[str, int] = {}
    drawn_again: int = 0


class FuzzReport(msgspec.Struct):
    mode: str
    count: int
    seed: int
    rows: list[SubjectRow]
    crashed: list[str]
    restarted: list[str]
    other_outputs: dict[str, int]
    stray_letters: int
    reasons: dict[str, int]
    alive_after: bool
    wall_s: float
    publish_s: float
    drain_s: float

    @property
    def sent(self) -> int:
        return sum(r.sent for r in self.rows)

    @property
    def expected_letters(self) -> int:
        return sum(r.sent * len(r.workers) for r in self.rows)

    @property
    def letters(self) -> int:
        return sum(r.letters for r in self.rows)

    @property
    def not_dead_lettered(self) -> int:
        return sum(r.missing for r in self.rows)

    @property
    def clean(self) -> bool:
        """0 crashes, every message dead-lettered once by each consumer with its reason,
        nothing else published, and the fleet still trading afterwards."""
        return (
            not self.crashed
            and not self.restarted
            and not self.other_outputs
            and self.stray_letters == 0
            and self.alive_after
            and all(
                r.missing == r.duplicates == r.empty_reasons == r.wrong_reasons == 0
                and r.letters == r.sent * len(r.workers)
                for r in self.rows
            )
        )


def input_patterns(roles: list[Role]) -> list[tuple[str, str]]:
    """Every (stream, subject pattern) some worker consumes, once each, in fleet order."""
    seen: dict[tuple[str, str], None] = {}
    for role in roles:
        for spec in role.inputs:
            for pattern in spec.subjects:
                seen[(spec.stream, pattern)] = None
    return list(seen)


def consumers_of(roles: list[Role], stream: str, subject: str) -> list[str]:
    return [
        role.name
        for role in roles
        if any(
            spec.stream == stream and any(subject_matches(p, subject) for p in spec.subjects)
            for spec in role.inputs
        )
    ]


class Fleet(Protocol):
    roles: list[Role]

    async def start(self, url: str) -> None: ...

    def crashed(self) -> list[str]: ...

    async def stop(self) -> None: ...


class InProcessFleet:
    """The default fleet's workers in this process, each on its own connection."""

    def __init__(self, config: KeelConfig | None = None) -> None:
        self.roles = fleet_roles(config or KeelConfig())
        self.workers: list[Worker] = []
        self.buses: list[Bus] = []
        self.tasks: list[asyncio.Task] = []

    async def start(self, url: str) -> None:
        options = WorkerOptions(metrics_port=None, heartbeat_s=0.5)
        self.workers = [Worker(role, options) for role in self.roles]
        self.buses = [await Bus.connect(url, name=w.name) for w in self.workers]
        self.tasks = [
            asyncio.create_task(w.run(b)) for w, b in zip(self.workers, self.buses, strict=True)
        ]

    def crashed(self) -> list[str]:
        return [w.name for w, t in zip(self.workers, self.tasks, strict=True) if t.done()]

    async def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 30)
        for bus in self.buses:
            await bus.close()


def role_args(name: str) -> list[str]:
    """The ``keel run`` arguments of a default-fleet role."""
    if name.startswith("strategy-"):
        return ["run", "strategy", "--instance", name.removeprefix("strategy-")]
    return ["run", name]


class ProcessFleet:
    """The default fleet as real ``keel run <role>`` processes, logs in ``log_dir``."""

    def __init__(self, log_dir: Path) -> None:
        self.roles = fleet_roles(KeelConfig())
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    async def start(self, url: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, URL_ENV: url, "PYTHONUNBUFFERED": "1"}
        for role in self.roles:
            with open(self.log_dir / f"{role.name}.log", "ab") as log:
                self.procs[role.name] = subprocess.Popen(
                    [sys.executable, "-m", "cli.app", *role_args(role.name)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=ROOT,
                    start_new_session=True,
                )

    def crashed(self) -> list[str]:
        return [name for name, p in self.procs.items() if p.poll() is not None]

    def log_tail(self, name: str, lines: int = 5) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:])

    async def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _counts(bus: Bus) -> dict[str, int]:
    """Messages per stream, and per subject family in SYSTEM (heartbeats grow on their own)."""
    out: dict[str, int] = {}
    for spec in STREAMS:
        info = await bus.js.stream_info(spec.name, subjects_filter=">")
        if spec.name == "SYSTEM":
            for subject, n in (info.state.subjects or {}).items():
                family = ".".join(subject.split(".")[:2])
                out[family] = out.get(family, 0) + n
        else:
            out[spec.name] = info.state.messages
    return out


async def _publish(bus: Bus, messages: list[tuple[str, str, Malformed]]) -> list[tuple[str, int]]:
    """Publish with a bounded window of in-flight messages; (stream, seq) of each."""
    out: list[tuple[str, int]] = []
    for start in range(0, len(messages), WINDOW):
        futures = [
            await bus.js.publish_async(m.subject, m.data, headers=m.headers)
            for _, _, m in messages[start : start + WINDOW]
        ]
        for ack in await asyncio.gather(*futures):
            assert not ack.duplicate, "fuzz message ids are unique per run"
            out.append((ack.stream, ack.seq))
    return out


async def _alive(bus: Bus, consumers: set[str], before: int) -> bool:
    """After the fuzz the fleet still trades: valid bars are consumed by every worker and
    the portfolio values the book on them."""
    for i in range(3):
        close = 1_800_000_000_000_000_000 + i * 60_000_000_000
        bar = Bar(
            ts=close,
            venue="sim",
            symbol="BTC/USDT",
            interval="1m",
            open_time=close - 60_000_000_000,
            close_time=close,
            open=100.0,
            high=101.0,
            low=99.0,
            close=100.5,
            volume=1.0,
        )
        await bus.publish(bar, bar_envelope(bar))
    if not await wait_drained(bus, consumers, timeout=60):
        return False
    info = await bus.js.stream_info("PORTFOLIO")
    return info.state.messages > before


Batches = list[tuple[str, str, list[Malformed], int]]
"""Per input pattern: its stream, the pattern, its messages and how many were drawn again."""


def generated(roles: list[Role], count: int, seed: int) -> Batches:
    """``count`` generated malformed messages for every input pattern of ``roles``."""
    run = f"fuzz{seed}-{time.time_ns()}"
    out: Batches = []
    for stream, pattern in input_patterns(roles):
        generator = Generator(pattern, seed)
        out.append((stream, pattern, generator.messages(count, run), generator.skipped))
    return out


async def run_fuzz(
    url: str, fleet: Fleet, count: int, seed: int = 0, mode: str = "in-process"
) -> FuzzReport:
    """Send ``count`` malformed messages on every input pattern of ``fleet`` and account
    for each (``FuzzReport.clean`` is the verdict)."""
    batches = generated(fleet.roles, count, seed)
    return await run_batches(url, fleet, batches, count, seed, mode)


async def run_batches(
    url: str, fleet: Fleet, batches: Batches, count: int = 0, seed: int = 0, mode: str = ""
) -> FuzzReport:
    """Start ``fleet``, publish ``batches`` through the server, account for every message."""
    started = time.monotonic()
    bus = await Bus.connect(url, name="fuzz")
    consumers = {durable_name(r.name, i.stream) for r in fleet.roles for i in r.inputs}
    rows: list[SubjectRow] = []
    messages: list[tuple[str, str, Malformed]] = []
    for stream, pattern, batch, skipped in batches:
        messages.extend((stream, pattern, m) for m in batch)
        workers = {w for m in batch for w in consumers_of(fleet.roles, stream, m.subject)}
        kinds = dict(Counter(m.kind for m in batch))
        rows.append(SubjectRow(pattern, stream, sorted(workers), kinds=kinds, drawn_again=skipped))
    try:
        await fleet.start(url)
        assert await wait_drained(bus, consumers, timeout=120), "the fleet did not start"
        before = await _counts(bus)
        system_before = (await bus.js.stream_info("SYSTEM")).state.last_seq
        t0 = time.monotonic()
        positions = await _publish(bus, messages)
        publish_s = time.monotonic() - t0
        timeout = 120 + len(messages) / 50
        drained = await wait_drained(bus, consumers, timeout=timeout)
        drain_s = time.monotonic() - t0 - publish_s
        letters = await _letters(bus, system_before + 1)
        restarted = await _restarts(bus, system_before + 1)
        after = await _counts(bus)
        stray = _account(fleet.roles, rows, messages, positions, letters)
        other = _other_outputs(before, after, positions)
        if not drained:
            other["not drained"] = 1
        crashed = fleet.crashed()
        portfolio = (await bus.js.stream_info("PORTFOLIO")).state.messages
        alive = not crashed and await _alive(bus, consumers, portfolio)
    finally:
        await fleet.stop()
        await bus.close()
    return FuzzReport(
        mode=mode,
        count=count,
        seed=seed,
        rows=rows,
        crashed=crashed,
        restarted=restarted,
        other_outputs=other,
        stray_letters=stray,
        reasons=dict(Counter(reason_kind(letter.reason) for letter in letters).most_common()),
        alive_after=alive,
        wall_s=time.monotonic() - started,
        publish_s=publish_s,
        drain_s=drain_s,
    )


async def _letters(bus: Bus, start_seq: int) -> list[DeadLetter]:
    return [
        item.event
        async for item in bus.read("sys.dlq.>", "SYSTEM", start_seq=start_seq)
        if isinstance(item, Stored) and isinstance(item.event, DeadLetter)
    ]


async def _restarts(bus: Bus, start_seq: int) -> list[str]:
    """Workers whose heartbeats came from more than one instance (process) during the run."""
    instances: dict[str, set[str]] = defaultdict(set)
    async for item in bus.read("sys.heartbeat.>", "SYSTEM", start_seq=start_seq):
        if isinstance(item, Stored) and isinstance(item.event, Heartbeat):
            instances[item.event.worker].add(item.event.instance)
    return sorted(w for w, seen in instances.items() if len(seen) > 1)


_REASON_KINDS = (
    ("missing Nats-Msg-Id", "no message id"),
    ("bad envelope header", "bad envelope header"),
    ("JSON is malformed", "not JSON"),
    ("Input data was truncated", "not JSON"),
    ("Invalid UTF-8", "not JSON"),
    ("Expected `", "wrong shape or type"),
    ("Object missing required field", "wrong shape or type"),
    ("Invalid value", "wrong shape or type"),
    ("Invalid enum value", "wrong shape or type"),
    ("Number out of range", "wrong shape or type"),
    (" not admitted on ", "another type on the subject"),
    ("cannot form a subject", "name cannot form a subject"),
    ("handler error", "handler error"),
    ("output error", "output error"),
    ("worker error", "worker error"),
)


def reason_kind(reason: str) -> str:
    """A dead letter's reason, coarsely: what a report can count."""
    text = reason.removeprefix("undecodable: ")
    for fragment, kind in _REASON_KINDS:
        if fragment in text:
            return kind
    if text.startswith("subject ") and " != payload " in text:
        return "identity differs from the subject"
    return "an invariant of the type"


def _account(
    roles: list[Role],
    rows: list[SubjectRow],
    messages: list[tuple[str, str, Malformed]],
    positions: list[tuple[str, int]],
    letters: list[DeadLetter],
) -> int:
    """Fill each row's letter counts; return the letters that answer no fuzz message."""
    by_key: dict[tuple[str, str, int], list[DeadLetter]] = defaultdict(list)
    for letter in letters:
        by_key[(letter.worker, letter.stream, letter.stream_seq)].append(letter)
    row_of = {r.pattern: r for r in rows}
    answered = 0
    for (stream, pattern, message), (stored_in, seq) in zip(messages, positions, strict=True):
        row = row_of[pattern]
        row.sent += 1
        for worker in consumers_of(roles, stream, message.subject):
            got = by_key.get((worker, stored_in, seq), [])
            answered += len(got)
            row.letters += len(got)
            if not got:
                row.missing += 1
                continue
            row.duplicates += len(got) - 1
            for letter in got:
                if not letter.reason.strip():
                    row.empty_reasons += 1
                elif message.reason not in letter.reason or letter.subject != message.subject:
                    row.wrong_reasons += 1
    return len(letters) - answered


def _other_outputs(
    before: dict[str, int],
    after: dict[str, int],
    positions: list[tuple[str, int]],
) -> dict[str, int]:
    """What the streams gained beyond the fuzz messages, heartbeats and dead letters."""
    sent = Counter(stream for stream, _ in positions)
    out: dict[str, int] = {}
    for key in set(before) | set(after):
        if key in ("sys.heartbeat", "sys.dlq"):
            continue
        extra = after.get(key, 0) - before.get(key, 0) - sent.get(key, 0)
        if extra:
            out[key] = extra
    return out
