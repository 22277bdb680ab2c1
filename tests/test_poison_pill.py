"""Issue 13, defect 2: one message must never halt a worker, on this run or any restart.

A valid ``Signal`` whose strategy cannot form a subject (``"evil strat"``) used to crash risk
when it built the subject of its outputs, outside the dead-letter handling, and again on
every restart. Now every step between receiving a message and acknowledging it turns a
failure into a dead letter with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import ClassVar

import msgspec

from contracts.codec import encode
from contracts.envelope import Envelope, bar_envelope
from contracts.events import Bar, Event, OrderCommand, RiskAlert, Signal
from contracts.system_events import DeadLetter, SystemStatus
from eventstore.bus import Bus
from eventstore.lag import wait_drained
from eventstore.server import EmbeddedServer
from services.risk.limits import RiskLimits
from services.risk.role import risk_role
from services.runtime.role import Input, Role
from services.runtime.worker import Worker
from tests import scenario
from tests.test_worker_runtime import QUIET, consumers, running, stored


async def letters(bus: Bus, worker: str) -> list[DeadLetter]:
    return [
        e for e in await stored(bus, f"sys.dlq.{worker}", "SYSTEM") if isinstance(e, DeadLetter)
    ]


def signal(strategy: str, target: float) -> Signal:
    return Signal(
        ts=scenario.bars()[0].close_time,  # on the bar risk saw: not stale
        strategy=strategy,
        venue="test",
        symbol="BTC/USDT",
        target_position=target,
    )


async def publish_raw(bus: Bus, subject: str, event: Event, event_id: str) -> None:
    """What a misbehaving publisher does: its own subject, whatever the payload says."""
    headers = Envelope.root(event_id, event.ts).headers()
    await bus.js.publish(subject, encode(event), headers=headers)


async def test_a_signal_whose_strategy_cannot_form_a_subject_is_a_dead_letter(
    nats_server: EmbeddedServer,
) -> None:
    bar = scenario.bars()[0]
    workers = [Worker(risk_role(RiskLimits(max_position=5)), QUIET)]
    async with running(nats_server.url, workers) as bus:
        await bus.publish(bar, bar_envelope(bar))
        await publish_raw(bus, "sig.ma.test.BTC-USDT", signal("evil strat", 1.0), "evil-1")
        assert await wait_drained(bus, consumers(workers), timeout=20)
        [letter] = await letters(bus, "risk")
        assert letter.subject == "sig.ma.test.BTC-USDT"
        assert "evil strat" in letter.reason
        assert msgspec.json.decode(letter.payload)["strategy"] == "evil strat"
        assert await stored(bus, "ord.>", "ORDERS") == []

        # the worker is still up and trades the next valid signal
        await publish_raw(bus, "sig.ma.test.BTC-USDT", signal("ma", 1.0), "good-1")
        assert await wait_drained(bus, consumers(workers), timeout=20)
        orders = [e for e in await stored(bus, "ord.>", "ORDERS") if isinstance(e, OrderCommand)]
        assert [(o.strategy, o.side, o.qty) for o in orders] == [("ma", "buy", 1.0)]

    # a restart neither crashes nor sees the poison again
    again = [Worker(risk_role(RiskLimits(max_position=5)), QUIET)]
    async with running(nats_server.url, again) as bus:
        await publish_raw(bus, "sig.ma.test.BTC-USDT", signal("ma", 2.0), "good-2")
        assert await wait_drained(bus, consumers(again), timeout=20)
        assert len(await letters(bus, "risk")) == 1
        orders = [e for e in await stored(bus, "ord.>", "ORDERS") if isinstance(e, OrderCommand)]
        assert [o.strategy for o in orders] == ["ma", "ma"]


class Unpublishable:
    """A decider whose answer to the second bar cannot form a subject (a rule name with a
    space), next to an output that could: neither may be published."""

    snapshot_version: ClassVar[int] = 1

    def __init__(self) -> None:
        self.seen = 0

    def decide(self, event: Event, now: int) -> Sequence[Event]:
        assert isinstance(event, Bar)
        self.seen += 1
        status = SystemStatus(ts=now, status="RUNNING", reason=str(self.seen), source="probe")
        if self.seen == 2:
            return [status, RiskAlert(ts=now, rule="bad rule", action="none")]
        return [status]

    def snapshot(self) -> bytes:
        return str(self.seen).encode()

    def restore(self, data: bytes) -> None:
        self.seen = int(data)


async def test_outputs_that_cannot_be_published_become_one_dead_letter(
    nats_server: EmbeddedServer,
) -> None:
    def role() -> Role:
        return Role("probe", (Input("MARKET", ("md.bar.>",)),), Unpublishable())

    bars = scenario.bars()[:3]
    workers = [Worker(role(), QUIET)]
    async with running(nats_server.url, workers) as bus:
        for bar in bars:
            await bus.publish(bar, bar_envelope(bar))
        assert await wait_drained(bus, consumers(workers), timeout=20)
        [letter] = await letters(bus, "probe")
        assert letter.reason.startswith("output error: SubjectError")
        assert "'bad rule'" in letter.reason
        assert letter.subject == "md.bar.test.BTC-USDT.1m"
        statuses = [e.reason for e in await stored(bus, "sys.status.>", "SYSTEM")]
        assert statuses == ["1", "3"]  # nothing of the second bar's outputs

    again = [Worker(role(), QUIET)]
    async with running(nats_server.url, again) as bus:
        await asyncio.sleep(0.2)
        assert again[0].decider.seen == 3  # restored, nothing redelivered
