"""Stopping a ``keel up`` a test started, fleet included."""

from __future__ import annotations

import asyncio
import signal


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
