"""Starting and stopping a ``keel up`` on an exchange fake's time, fleet included."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from eventstore.server import URL_ENV
from tests.conftest import ROOT
from tests.fakes.clock import ScaledClock


def fake_time_env(url: str, clock: ScaledClock) -> dict[str, str]:
    """The environment of a Keel process on ``url`` that shares the fake's exchange clock
    (``tests/fakes/site/sitecustomize.py``)."""
    return {
        **os.environ,
        URL_ENV: url,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "fakes" / "site"), str(ROOT)]),
        "KEEL_TEST_CLOCK": clock.to_env(),
        "COLUMNS": "300",
    }


async def start_up(
    cwd: Path, url: str, clock: ScaledClock, config: Path
) -> asyncio.subprocess.Process:
    """``keel up --config CONFIG`` attached to ``url``, its output piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.app", "up", "--config", str(config),
        cwd=cwd, env=fake_time_env(url, clock),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip


async def stop_up(up: asyncio.subprocess.Process, timeout: float = 30.0) -> None:
    """After a failed wait: SIGINT first, so ``keel up`` stops the workers it started (they
    run in their own sessions and would outlive a SIGKILL of ``keel up``), then SIGKILL."""
    if up.returncode is not None:
        return
    up.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(up.wait(), timeout)
    except TimeoutError:
        up.kill()
        await up.wait()
