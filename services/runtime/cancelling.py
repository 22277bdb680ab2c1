"""Ending tasks for good, within a bound: what every stop of a looping task relies on.

On Python 3.11 ``asyncio.wait_for`` drops a cancel that arrives while its inner future has
just completed (it returns the result instead; fixed in 3.12). Library code on the gateway's
path waits that way (nats-py, ib_async), so a task looping ``while True`` can outlive the one
cancel a stop gives it: the in-process IB gateway's reconciliation loop did, and a stop that
awaited it never ended. A task is therefore cancelled again until it ends, within a bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any

AGAIN_S = 0.1
"""Wall seconds between two cancels of a task that has not ended yet."""


async def end_tasks(tasks: Iterable[asyncio.Task[Any]], within_s: float) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` until each has ended, for at most ``within_s`` wall seconds; the ones
    still running then are returned (for the caller to name). A cancel of the caller meanwhile
    does not leave them behind: it is raised once they are ended."""
    pending = {task for task in tasks if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    interrupted = False
    while pending:
        for task in pending:
            task.cancel()
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            await asyncio.wait(pending, timeout=min(AGAIN_S, remaining))
        except asyncio.CancelledError:
            interrupted = True
        pending = {task for task in pending if not task.done()}
    if interrupted:
        raise asyncio.CancelledError
    return pending


async def finish_within(coro: Coroutine[Any, Any, Any], within_s: float) -> bool:
    """Run ``coro`` (a close) for at most ``within_s`` wall seconds, then end it; True if it
    ended on its own. Its errors are not raised: a close that fails has still ended."""
    task = asyncio.create_task(coro)
    try:
        await asyncio.wait({task}, timeout=within_s)
    except asyncio.CancelledError:
        await end_tasks({task}, within_s)
        raise
    ended = task.done()
    await end_tasks({task}, within_s)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: a failing close is not a stuck one
    return ended
