"""An open bracket survives a real execution worker crash: a real nats-server, the worker as
its own process, killed after it published a trailing-stop amendment and before it stored
its snapshot and acknowledged; restarted, it carries on and the stop fires exactly once."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

from contracts.codec import encode
from contracts.envelope import Envelope, bar_envelope, content_id
from contracts.events import Bar, Event, ExecutionReport, OrderCommand
from eventstore.bus import Bus, Stored
from eventstore.lag import wait_drained
from eventstore.server import EmbeddedServer
from services.execution.oms import OrderManager
from services.execution.paper_venue import PaperVenue, PaperVenueConfig
from services.fleet import Fleet, WorkerProcess
from services.runtime.role import durable_name
from tests.crash_worker import CRASH_CODE, start_crashing
from tests.factories import BTC, T0_ON_MINUTE, VENUE, ohlc_bar

NAMES = {durable_name("execution", "ORDERS"), durable_name("execution", "MARKET")}


bar = partial(ohlc_bar, start=T0_ON_MINUTE)
BARS = [
    bar(0, 100.0, 101.0, 99.0, 100.5),
    bar(1, 102.0, 104.0, 101.0, 103.0),  # the entry fills at 102; the OCO pair goes in
    bar(2, 103.0, 105.0, 102.5, 104.5),  # the stop trails to 102.9: the worker dies here
    bar(3, 104.5, 106.0, 103.5, 105.5),  # 103.88
    bar(4, 105.5, 105.8, 104.0, 104.2),
    bar(5, 104.0, 104.5, 103.0, 103.2),  # the stop fills at 103.88
    bar(6, 103.0, 103.0, 101.0, 101.5),
]
ENTRY = OrderCommand(
    ts=BARS[0].close_time,
    action="new",
    client_order_id="e1",
    strategy="s",
    venue=VENUE,
    symbol=BTC,
    side="buy",
    qty=1.0,
    take_profit=120.0,
    stop_loss=97.0,
    trail_pct=2.0,
)


def envelope(event: Event) -> Envelope:
    if isinstance(event, Bar):
        return bar_envelope(event)
    return Envelope.root(content_id("test-order", event.client_order_id), event.ts)  # type: ignore[attr-defined]


def session() -> list[Event]:
    return [BARS[0], ENTRY, *BARS[1:]]


def in_process() -> list[bytes]:
    manager = OrderManager(PaperVenue(PaperVenueConfig(fee_bps=0.0)))
    return [encode(out) for event in session() for out in manager.decide(event, event.ts)]


async def stored_reports(bus: Bus) -> list[ExecutionReport]:
    return [
        item.event
        for item in [i async for i in bus.read("exec.>", "EXECUTION")]
        if isinstance(item, Stored) and isinstance(item.event, ExecutionReport)
    ]


async def test_execution_crash_with_an_open_trailing_bracket_fires_the_stop_once(
    tmp_path: Path, nats_server: EmbeddedServer, bus: Bus
) -> None:
    config = tmp_path / "keel.toml"
    config.write_text("[execution]\nfee_bps = 0\n")
    fleet = Fleet(nats_server.url, tmp_path / "logs")
    args = ["run", "execution", "--config", str(config)]
    # Batches that publish: the entry's acceptance, bar 1 (fill and legs), bar 2 (trail).
    worker = start_crashing(fleet, "execution", config, batches=3)
    events = session()
    try:
        assert await wait_drained(bus, NAMES, timeout=60), "worker did not start"
        for event in events[:4]:  # bar 0, the entry, bars 1 and 2
            await bus.publish(event, envelope(event))
            if event is not events[3]:
                assert await wait_drained(bus, NAMES, timeout=30), "worker did not settle"
        assert worker.proc is not None
        for _ in range(300):
            if worker.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        assert worker.proc.returncode == CRASH_CODE, "fault injection did not fire"
        before = await stored_reports(bus)
        assert [(r.status, r.client_order_id) for r in before] == [
            ("accepted", "e1"),
            ("filled", "e1"),
            ("accepted", "e1.tp"),
            ("accepted", "e1.sl"),
            ("accepted", "e1.sl"),  # amended: the trail moved it to 102.9
        ]

        fleet.start(WorkerProcess("execution", args))
        assert await wait_drained(bus, NAMES, timeout=30), "restarted worker did not catch up"
        assert await stored_reports(bus) == before, "re-published copies were stored"
        for event in events[4:]:
            await bus.publish(event, envelope(event))
            assert await wait_drained(bus, NAMES, timeout=30), "worker did not settle"

        reports = await stored_reports(bus)
        stop_fills = [r for r in reports if r.client_order_id.startswith("e1.sl") and r.fill_qty]
        assert len(stop_fills) == 1
        assert stop_fills[0].fill_price == 106.0 - 106.0 * 2.0 / 100.0
        assert stop_fills[0].ts == BARS[5].close_time
        assert [encode(r) for r in reports] == in_process()
    finally:
        fleet.stop()
