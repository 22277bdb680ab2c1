"""A stop always ends: tasks that lose a cancel are cancelled again, within a bound.

On Python 3.11 ``asyncio.wait_for`` returns its inner result instead of raising when a cancel
arrives just as that inner future completes; the in-process IB gateway's reconciliation loop
(``while True``) lost its one cancel that way inside ``IbExchange._ask``, kept running, and
the gateway's stop, which awaited it, never ended (the CI hang). These tasks lose a cancel
on purpose, as ``wait_for`` does, so the test does not depend on the race's timing.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from services.runtime import cancelling
from services.runtime.cancelling import end_tasks, finish_within
from services.venues.ib.connection import CLOSE_S, IbConnection, LinkState
from services.venues.ib.settings import IbSettings
from tests.fakes.tws import TwsFake
from tests.test_ib_connection import tws

__all__ = ["tws"]  # the fixture, imported for pytest


async def loses_one_cancel(started: asyncio.Event) -> str:
    """A loop that outlives its first cancel, then honours the next."""
    started.set()
    lost = False
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if lost:
                raise
            lost = True  # dropped, as 3.11's wait_for drops it


async def test_one_cancel_is_not_enough_and_end_tasks_ends_it() -> None:
    started = asyncio.Event()
    task = asyncio.create_task(loses_one_cancel(started))
    await started.wait()
    task.cancel()
    await asyncio.wait([task], timeout=0.3)
    assert not task.done()  # what the gateway's stop used to wait on for good
    assert await end_tasks([task], 5.0) == set()
    assert task.cancelled()


async def test_a_task_that_ignores_every_cancel_is_returned_within_the_bound() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await end_tasks([task], 0.5) == {task}
    assert loop.time() - began < 5.0
    release.set()
    task.cancel()
    await task
    assert task.done() and not task.cancelled()


async def test_a_cancelled_caller_still_ends_its_tasks_then_raises() -> None:
    started = asyncio.Event()
    child = asyncio.create_task(loses_one_cancel(started))
    await started.wait()
    ending = asyncio.create_task(end_tasks([child], 5.0))
    await asyncio.sleep(0)
    ending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ending
    assert child.cancelled()


async def test_finish_within_says_whether_a_close_ended_on_its_own() -> None:
    async def close() -> str:
        return "closed"

    async def failing() -> None:
        raise OSError("socket gone")

    assert await finish_within(close(), 1.0)
    assert await finish_within(failing(), 1.0)
    hanging = asyncio.Event()
    assert not await finish_within(loses_one_cancel(hanging), 2 * cancelling.AGAIN_S)
    assert hanging.is_set()


async def test_an_ib_session_closes_while_a_hook_loses_its_cancel(tws: TwsFake) -> None:
    """A connection hook (the gateway's reconciliation after a reconnect) that loses the
    close's cancel: the close still ends, within its bound, and the socket is closed."""
    settings = IbSettings(port=tws.port, client_id=5, account="DU1234567", connect_timeout_s=2)
    conn = IbConnection(settings, tws.clock, rng=random.Random(1))
    started = asyncio.Event()

    async def hook(first: bool) -> None:
        await loses_one_cancel(started)

    conn.on_connected.append(hook)
    await conn.start(timeout_s=5)
    await started.wait()
    async with asyncio.timeout(CLOSE_S):
        await conn.close()
    assert conn.state is LinkState.CLOSED and not conn.ib.isConnected()
    assert conn._task is not None and conn._task.done()
