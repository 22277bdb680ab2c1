"""One lockstep session under a supervisor, for the chaos harness (``bench/chaos.py``).

The harness is the operator: it runs the log (one embedded nats-server, or a local cluster),
starts every worker and the lockstep feed as real ``keel run`` processes, and restarts any of
them that exits, after a short delay, the way a person or ``keel up`` would. The faults
(``bench/chaos_faults.py``) run next to it and see the session through ``Session``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import msgspec

from eventstore.bus import Bus
from eventstore.lag import consumer_lags, wait_drained
from eventstore.server import URL_ENV, EmbeddedServer
from eventstore.streams import REPLICAS_ENV, StoreSettings, ensure_streams
from services.config import load_config
from services.fleet import consumer_names, fleet_plan, keel_command

FEED = "marketdata"
POLL_S = 0.1
STALL_S = 120.0
"""A session whose feed stores nothing new for this long is reported as hung."""
SETTLE_S = 180.0
"""How long the fleet may take to acknowledge everything once the last bar is stored."""


class SessionSpec(msgspec.Struct, frozen=True):
    """What a session runs: a fleet config, a bar file fed in lockstep, where it works."""

    config: Path
    data: Path
    symbol: str
    venue: str
    bars: int
    workdir: Path
    env: dict[str, str] = {}
    """Extra environment for every process (``KEEL_STREAM_REPLICAS`` on a cluster)."""


class Exit(msgspec.Struct, frozen=True):
    """A process that ended: which, its return code, whether the harness killed it."""

    name: str
    code: int
    injected: bool
    at_bar: int


class Backend(Protocol):
    """The log the session runs on."""

    @property
    def url(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class SingleServer:
    """One embedded nats-server on a fixed port and store, killable and restartable."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self._server: EmbeddedServer | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server = EmbeddedServer(self.data_dir, self.port).start(timeout=30)

    def kill(self) -> None:
        """SIGKILL, as ``kill -9`` would."""
        if self._server is not None and self._server.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._server.pid, signal.SIGKILL)
            self._server.stop()  # reaps it
            self._server = None

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


class Child:
    """A supervised ``keel run`` process; restarted whenever it exits unless finished."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.args = args
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.finished = False
        self.killed_by_harness = False
        self.down_since: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 5) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:])


class Session:
    """The running session as the faults see it: processes, bars stored, the backend."""

    def __init__(
        self,
        spec: SessionSpec,
        backend: Backend,
        report: Callable[[str], None],
        restart_delay: float = 0.5,
    ) -> None:
        self.spec = spec
        self.report = report
        self.backend = backend
        self.restart_delay = restart_delay
        self.children: dict[str, Child] = {}
        self.exits: list[Exit] = []
        self.bars_stored = 0
        self.bus: Bus | None = None
        self.notes: list[str] = []

    # processes -------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.spec.env,
            URL_ENV: self.backend.url,
            "PYTHONUNBUFFERED": "1",
        }

    def add(self, name: str, args: list[str]) -> Child:
        child = Child(name, args, self.spec.workdir / "logs" / f"{name}.log")
        self.children[name] = child
        return child

    def launch(self, child: Child) -> None:
        child.log.parent.mkdir(parents=True, exist_ok=True)
        with open(child.log, "ab") as log:
            child.proc = subprocess.Popen(
                keel_command(*child.args),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.spec.workdir,
                start_new_session=True,
            )
        child.down_since = None
        child.killed_by_harness = False

    def kill(self, name: str) -> bool:
        """SIGKILL one process; the supervisor restarts it. False when it was not running."""
        child = self.children[name]
        if not child.alive():
            return False
        child.killed_by_harness = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        return True

    def pause(self, name: str) -> bool:
        """SIGSTOP: the process keeps its connection and its unacknowledged batch."""
        child = self.children[name]
        if not child.alive():
            return False
        os.kill(child.pid, signal.SIGSTOP)
        return True

    def resume(self, name: str) -> None:
        child = self.children[name]
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGCONT)

    async def supervise(self) -> None:
        """Restart whatever exited, after ``restart_delay``; the feed is done once it exits 0
        with every bar stored."""
        while True:
            now = time.monotonic()
            for child in self.children.values():
                if child.finished or child.proc is None:
                    continue
                code = child.proc.poll()
                if code is None:
                    continue
                if child.down_since is None:
                    child.down_since = now
                    if child.name == FEED and code == 0:
                        await self.refresh_bars()
                    self.exits.append(
                        Exit(child.name, code, child.killed_by_harness, self.bars_stored)
                    )
                    if not child.killed_by_harness and not (child.name == FEED and code == 0):
                        self.report(
                            f"  {child.name} exited {code} at {self.bars_stored} bars: "
                            f"{child.tail(1)[:160]!r}"
                        )
                    if child.name == FEED and code == 0:
                        if self.bars_stored >= self.spec.bars:
                            child.finished = True
                            continue
                        self.notes.append(
                            f"feed exited 0 at {self.bars_stored}/{self.spec.bars} bars"
                        )
                if now - child.down_since >= self.restart_delay:
                    self.launch(child)
            await asyncio.sleep(POLL_S)

    def stop_all(self) -> None:
        for child in self.children.values():
            if child.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGCONT)
                    child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in self.children.values():
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()

    # the log ---------------------------------------------------------------------------

    async def refresh_bars(self) -> int:
        """Bars stored so far (the last known count while the log is unreachable)."""
        if self.bus is not None:
            with contextlib.suppress(Exception):
                info = await asyncio.wait_for(self.bus.js.stream_info("MARKET"), 2.0)
                self.bars_stored = info.state.messages
        return self.bars_stored

    async def wait_bars(self, bars: int) -> None:
        """Until at least ``bars`` bars are stored."""
        while await self.refresh_bars() < bars:
            await asyncio.sleep(POLL_S)


class Outcome(msgspec.Struct):
    """How a session went, apart from what it stored."""

    wall_s: float
    hung: str = ""
    exits: list[Exit] = []
    notes: list[str] = []


Faults = Callable[[Session], Awaitable[int]]
"""Injects a scenario's faults into a running session; returns how many it injected."""


async def run_session(
    spec: SessionSpec,
    backend: Backend,
    faults: Faults | None,
    read: Callable[[Bus], Awaitable[object]],
    report: Callable[[str], None],
    deadline_s: float | None = None,
) -> tuple[Outcome, int, object]:
    """Run the session to its end with ``faults`` beside it, then ``read`` the log.

    A feed still running after ``deadline_s`` counts as hung. Returns the outcome, the number
    of faults injected and what ``read`` returned."""
    started = time.monotonic()
    config = load_config(spec.config)
    names = consumer_names(config)
    session = Session(spec, backend, report)
    backend.start()
    injected = 0
    try:
        session.bus = await Bus.connect(backend.url, name="chaos", ensure=False)
        replicas = int(spec.env.get(REPLICAS_ENV, "1"))
        await ensure_streams(session.bus.js, settings=StoreSettings(replicas=replicas))
        for worker in fleet_plan(config, spec.config):
            session.launch(session.add(worker.name, worker.args))
        supervisor = asyncio.create_task(session.supervise())
        try:
            # The lockstep barrier waits only for consumers that exist when the feed starts.
            if not await wait_drained(session.bus, names, timeout=120):
                raise TimeoutError("the workers did not create their consumers within 120 s")
            feed = session.add(FEED, feed_args(spec))
            session.launch(feed)
            fault_task = asyncio.create_task(faults(session)) if faults else None
            hung = await _watch_feed(session, feed, started + (deadline_s or float("inf")))
            if fault_task is not None:
                if hung:
                    fault_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    injected = await fault_task
            if not hung and not await _settle(session, names):
                hung = f"the fleet did not settle within {SETTLE_S:.0f} s after the last bar"
            if hung:
                hung += "; " + await _states(session, names)
                report(f"  HUNG: {hung}")
            data = await read(session.bus)
        finally:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
    finally:
        session.stop_all()
        if session.bus is not None:
            await session.bus.close()
        backend.stop()
    outcome = Outcome(time.monotonic() - started, hung, session.exits, session.notes)
    return outcome, injected, data


def feed_args(spec: SessionSpec) -> list[str]:
    return [
        "run",
        "marketdata",
        "--file",
        str(spec.data),
        "--symbol",
        spec.symbol,
        "--venue",
        spec.venue,
        "--lockstep",
        "--config",
        str(spec.config),
    ]


async def _watch_feed(session: Session, feed: Child, deadline: float) -> str:
    """Until the feed finished; a reason when it stored nothing new for ``STALL_S`` or
    is still running at ``deadline`` (monotonic)."""
    last, moved = -1, time.monotonic()
    total = session.spec.bars
    while not feed.finished:
        bars = await session.refresh_bars()
        now = time.monotonic()
        if bars != last:
            last, moved = bars, now
        elif now - moved > STALL_S:
            return f"no bar stored for {STALL_S:.0f} s at {bars}/{total} bars"
        if now > deadline:
            return f"the feed was still running at the deadline, at {bars}/{total} bars"
        await asyncio.sleep(POLL_S * 5)
    return ""


async def _settle(session: Session, names: set[str]) -> bool:
    assert session.bus is not None
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if await wait_drained(
                session.bus, names, timeout=max(1.0, deadline - time.monotonic())
            ):
                return True
        await asyncio.sleep(1.0)
    return False


async def _states(session: Session, names: set[str]) -> str:
    """Which consumers hold unacknowledged messages, and each process's state."""
    parts = []
    assert session.bus is not None
    try:
        for lag in await asyncio.wait_for(consumer_lags(session.bus), 10):
            if lag.consumer in names and (lag.pending or lag.ack_pending):
                parts.append(f"{lag.consumer}: {lag.pending} pending, {lag.ack_pending} unacked")
    except Exception as exc:
        parts.append(f"consumers unreadable ({type(exc).__name__})")
    for child in session.children.values():
        state = "running" if child.alive() else f"exited {child.proc.poll() if child.proc else '-'}"
        parts.append(f"{child.name} pid {child.pid} {state} (log {child.log})")
    return "; ".join(parts)
