"""Issue 13, defect 8: commands that steer or watch a running fleet never start a server.

``keel kill`` in a directory with no fleet used to start a fresh embedded server, store the
kill there and exit 0 while the real fleet kept trading. Now ``kill``, ``resume``,
``publish`` and ``status`` attach only (``status`` may also open a store the directory
already holds): with no ``KEEL_NATS_URL`` and no embedded server running for the
directory's store they say so in one line and exit non-zero, creating nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eventstore.bus import Bus
from eventstore.server import URL_ENV, nats_url

COMMANDS = [
    ("kill", "--reason", "x"),
    ("resume", "--reason", "x"),
    ("status",),
    ("status", "--json"),
    (
        "publish",
        "ext",
        "news",
        "--json",
        json.dumps({"kind": "listing", "venue": "binance", "symbol": "NEW/USDT"}),
    ),
]


def keel_here(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command line in ``cwd``, with no ``KEEL_NATS_URL``."""
    env = {k: v for k, v in os.environ.items() if k != URL_ENV}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "cli.app", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_no_fleet_is_one_line_and_a_non_zero_exit(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = keel_here(tmp_path, *args)
    both = result.stdout + result.stderr
    assert result.returncode != 0, both
    assert "Traceback" not in both, both
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "no running fleet" in lines[0], lines[0]
    assert URL_ENV in lines[0]
    assert not (tmp_path / ".keel").exists()  # no store, no server started
    assert "published" not in result.stdout


def test_kill_attaches_to_the_server_this_directory_runs(tmp_path: Path) -> None:
    """An embedded server recorded in ``.keel/server.json`` (as ``keel up`` leaves it) is the
    fleet: the kill is stored there, and no second server is started."""
    with nats_url(tmp_path / ".keel") as url:
        record = (tmp_path / ".keel" / "server.json").read_text()
        killed = keel_here(tmp_path, "kill", "--reason", "attached")
        assert killed.returncode == 0, killed.stdout + killed.stderr
        assert "kill published" in killed.stdout
        assert (tmp_path / ".keel" / "server.json").read_text() == record

        async def governance() -> int:
            bus = await Bus.connect(url, name="test-attach")
            try:
                return (await bus.js.stream_info("GOVERNANCE")).state.messages
            finally:
                await bus.close()

        assert asyncio.run(governance()) == 1
    assert not (tmp_path / ".keel" / "server.json").exists()
