"""IbConnection against the TWS fake with the real ib_async client: first connect, the daily
restart, a dropped socket, IB's link loss and restore, a client id still in use, and an
account the session does not serve."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import AsyncIterator, Callable

import pytest

from eventstore.errors import KeelError
from services.venues.ib.connection import IbConnection, LinkState, NotReady
from services.venues.ib.settings import IbSettings
from tests.fakes.clock import ScaledClock
from tests.fakes.tws import TwsFake

NS = 1_000_000_000
START = int(dt.datetime(2024, 3, 5, 15, 0, tzinfo=dt.UTC).timestamp()) * NS


@pytest.fixture
async def tws() -> AsyncIterator[TwsFake]:
    async with TwsFake(ScaledClock(START, 60.0)) as fake:
        yield fake


async def until(check: Callable[[], object], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def connection(tws: TwsFake, account: str = "DU1234567", client_id: int = 3) -> IbConnection:
    settings = IbSettings(port=tws.port, client_id=client_id, account=account, connect_timeout_s=2)
    return IbConnection(settings, tws.clock, rng=random.Random(1), in_use_wait_s=5.0)


async def test_connects_reconnects_after_restart_and_drop(tws: TwsFake) -> None:
    conn = connection(tws)
    connected: list[bool] = []
    conn.on_connected.append(connected.append)
    await conn.start(timeout_s=5)
    assert conn.ready and connected == [True]
    generation = conn.require_ready()
    restart = asyncio.create_task(tws.faults.restart(down_s=60))
    await until(lambda: not conn.ready)
    with pytest.raises(NotReady):
        conn.require_ready()
    with pytest.raises(NotReady):
        conn.check_same(generation)
    await restart
    await until(lambda: connected == [True, False])
    assert conn.ready and conn.generation == generation + 1
    assert conn.ib.managedAccounts() == ["DU1234567"]
    tws.faults.drop()
    await until(lambda: connected == [True, False, False])
    assert conn.ready
    await conn.close()
    assert conn.state is LinkState.CLOSED


async def test_link_loss_and_restore_call_the_hooks(tws: TwsFake) -> None:
    conn = connection(tws)
    links: list[tuple[bool, bool]] = []
    conn.on_link.append(lambda restored, lost: links.append((restored, lost)))
    await conn.start(timeout_s=5)
    generation = conn.generation
    tws.faults.lose_link()
    await until(lambda: conn.state is LinkState.LINK_LOST)
    assert not conn.ready and conn.generation == generation + 1
    tws.faults.restore_link(data_lost=True)
    await until(lambda: conn.ready)
    tws.faults.lose_link()
    await until(lambda: not conn.ready)
    tws.faults.restore_link(data_lost=False)
    await until(lambda: len(links) == 4)
    assert links == [(False, False), (True, True), (False, False), (True, False)]
    await conn.close()


async def test_client_id_in_use_waits_and_retries(
    tws: TwsFake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="keel.ib")
    tws.faults.hold_client_id(3)
    conn = connection(tws)
    task = asyncio.create_task(conn.start())
    await until(lambda: "client id 3 is still in use" in caplog.text)
    assert not conn.ready
    tws.faults.release_client_id(3)
    await asyncio.wait_for(task, 10)
    assert conn.ready
    await conn.close()


async def test_wrong_account_stops_with_one_line(tws: TwsFake) -> None:
    conn = connection(tws, account="DU7654321")
    with pytest.raises(KeelError, match="account DU7654321 is not served by this IB session"):
        await conn.start(timeout_s=5)
    assert conn.state is LinkState.CLOSED
    await conn.close()


async def test_unreachable_gateway_is_one_line_and_keeps_trying() -> None:
    settings = IbSettings(port=1, client_id=3, account="DU1234567", connect_timeout_s=1)
    conn = IbConnection(settings, ScaledClock(START, 60.0), rng=random.Random(1))
    with pytest.raises(KeelError, match=r"IB at 127.0.0.1:1 not reachable within 0.5 s"):
        await conn.start(timeout_s=0.5)
    assert conn.state in (LinkState.DOWN, LinkState.CONNECTING)
    await conn.close()
