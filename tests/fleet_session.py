"""What the end-to-end fleet harnesses share: their own nats-server, ``keel up`` on a fake's
exchange time (``KEEL_TEST_CLOCK``), Ctrl-C, and reading back what the fleet stored.

``tests/gateway_session.py`` (a ccxt exchange fake) and ``tests/ib_session.py`` (the TWS
fake) say which venue runs, how it starts and stops, and the fleet's config.
"""

from __future__ import annotations

import abc
import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from nats.js.api import DeliverPolicy

from contracts.events import ExecutionReport
from eventstore.bus import Bus
from eventstore.log_reader import read_caught_up
from eventstore.server import EmbeddedServer
from tests.fakes.clock import ScaledClock
from tests.up_process import fake_time_env, stop_up

KEEL_TIMEOUT_S = 120.0
"""How long a ``keel`` command of a test (``keel status``, ``keel replay``) may take."""


class FleetSession(abc.ABC):
    """Its own nats-server and ``keel up`` in ``work``; ``label`` starts its failures."""

    def __init__(self, work: Path, clock: ScaledClock, label: str = "") -> None:
        self.work = work
        self.clock = clock
        self.label = label
        self.config = work / "keel.toml"
        self.server: EmbeddedServer | None = None
        self.bus: Bus | None = None
        self.up: asyncio.subprocess.Process | None = None
        self.output = ""

    async def _open(self) -> None:
        """The server and the test's connection to it."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.server = EmbeddedServer(self.work / "nats").start()
        self.bus = await Bus.connect(self.server.url, name="test")

    async def _launch(self, config: str, *flags: str, env: Mapping[str, str] | None = None) -> None:
        """``keel up`` on ``config``, with ``env`` besides the server's and the clock's."""
        self.config.write_text(config)
        self.up = await self._keel(
            "up", "--config", str(self.config), *flags, env={**self.env(), **(env or {})}
        )

    def env(self) -> dict[str, str]:
        assert self.server is not None
        return fake_time_env(self.server.url, self.clock)

    async def _keel(self, *args: str, env: Mapping[str, str]) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli.app", *args,
            cwd=self.work, env=dict(env),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip

    async def keel(self, *args: str) -> str:
        """``keel ARGS`` on this session's server and time, its output as text."""
        proc = await self._keel(*args, env=self.env())
        out, _ = await asyncio.wait_for(proc.communicate(), KEEL_TIMEOUT_S)
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text
        return text

    async def stop_fleet(self) -> None:
        """Ctrl-C: ``keel up`` stops its workers and exits (the server and fake stay)."""
        up = self.up
        if up is None or up.returncode is not None:
            return
        up.send_signal(signal.SIGINT)
        try:
            out, _ = await asyncio.wait_for(up.communicate(), 60)
            self.output = out.decode(errors="replace")
        finally:
            await stop_up(up)

    @abc.abstractmethod
    async def _stop_venue(self) -> None:
        """The fake's own stop."""

    async def stop(self) -> None:
        """The fleet, then the fake and the test's connection; the server stays
        (``close_server``). Stopping twice does nothing more."""
        bus, self.bus = self.bus, None
        try:
            await self.stop_fleet()
        finally:
            await self._stop_venue()
            if bus is not None:
                await bus.close()

    def close_server(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop()

    async def events(self, stream: str, subjects: str, kind: type) -> list:
        assert self.bus is not None
        stored = await read_caught_up(self.bus, stream, subjects, DeliverPolicy.ALL)
        return [s.event for s in stored if isinstance(s.event, kind)]

    async def reports(self) -> list[ExecutionReport]:
        return await self.events("EXECUTION", "exec.report.>", ExecutionReport)

    async def until(self, check: Callable[[], Awaitable[bool]], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not await check():
            if self.up is not None and self.up.returncode is not None:
                raise AssertionError(f"{self.label}keel up ended while waiting for {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.label}timed out waiting for {what}")
            await asyncio.sleep(0.25)

    def log(self, worker: str) -> str:
        path = self.work / ".keel" / "logs" / f"{worker}.log"
        return path.read_text(errors="replace") if path.exists() else ""
