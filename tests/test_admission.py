"""Issue 13, defect 1: a subject admits only its own event type, with the identity fields it
carries equal to the payload's, so nats.conf's per-role permissions bind what a worker acts
on. The table over every event type, then the five bypasses the issue found, replayed as
their users against the secured server: each ends as a dead letter with a reason and
changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.admission import ADMITS, admission_error
from contracts.codec import encode
from contracts.envelope import Envelope
from contracts.events import EVENT_TYPES, Event, ExecutionReport, OrderCommand, Signal
from contracts.subjects import SubjectError, subject_for, symbol_token
from contracts.system_events import DeadLetter, GovernanceCommand
from eventstore.bus import Bus, Stored
from eventstore.lag import wait_drained
from services.marketdata.feed import publish_bars
from services.runtime.worker import Worker, WorkerOptions
from tests import scenario
from tests.test_contracts import STRATEGIES
from tests.test_nats_permissions import SecuredServer, scenario_roles

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
ANY_EVENT = st.sampled_from(EVENT_TYPES).flatmap(lambda t: STRATEGIES[t])


def subject_or_none(event: Event) -> str | None:
    try:
        return subject_for(event)
    except SubjectError:
        return None


def entry_of(subject: str) -> tuple[str, tuple[type[Event], tuple[str, ...]]]:
    tokens = subject.split(".")
    for prefix in (".".join(tokens[:2]), tokens[0]):
        if prefix in ADMITS:
            return prefix, ADMITS[prefix]
    raise AssertionError(f"no pattern for {subject}")


def test_every_event_type_is_admitted_by_exactly_one_pattern() -> None:
    admitted = [kind for kind, _ in ADMITS.values()]
    assert sorted(t.__name__ for t in admitted) == sorted(t.__name__ for t in EVENT_TYPES)


@PROPERTY
@given(ANY_EVENT)
def test_the_table_agrees_with_the_subject_builders(event: Event) -> None:
    subject = subject_or_none(event)
    if subject is None:
        return
    prefix, (kind, fields) = entry_of(subject)
    assert kind is type(event)
    tokens = subject.split(".")[len(prefix.split(".")) :]
    expected = [
        symbol_token(getattr(event, f)) if f == "symbol" else getattr(event, f) for f in fields
    ]
    assert tokens == expected


@PROPERTY
@given(ANY_EVENT, ANY_EVENT)
def test_a_subject_admits_only_its_own_events(event: Event, other: Event) -> None:
    own = subject_or_none(event)
    if own is not None:
        assert admission_error(own, event) is None
    there = subject_or_none(other)
    if there is None or there == own:
        return
    reason = admission_error(there, event)
    assert reason
    if type(other) is not type(event):
        prefix, _ = entry_of(there)
        assert reason == (
            f"{type(event).__name__} not admitted on {there} "
            f"({prefix}.* admits {type(other).__name__})"
        )
    else:
        assert reason.startswith("subject ") or "cannot form a subject" in reason


@PROPERTY
@given(ANY_EVENT, st.data())
def test_each_identity_token_must_equal_the_payload(event: Event, data: st.DataObject) -> None:
    subject = subject_or_none(event)
    if subject is None:
        return
    prefix, (_, fields) = entry_of(subject)
    if not fields:
        return
    at = data.draw(st.integers(0, len(fields) - 1))
    tokens = subject.split(".")
    skip = len(prefix.split("."))
    forged = data.draw(st.from_regex(r"[A-Za-z0-9]{1,8}", fullmatch=True))
    if forged == tokens[skip + at]:
        return
    tokens[skip + at] = forged
    field = fields[at]
    assert admission_error(".".join(tokens), event) == (
        f"subject {field} {forged!r} != payload {field} {getattr(event, field)!r}"
    )


def test_names_that_cannot_form_a_subject_are_refused() -> None:
    evil = Signal(ts=1, strategy="evil strat", venue="test", symbol="BTC/USDT", target_position=1)
    assert admission_error("sig.evil_20strat.test.BTC-USDT", evil) == (
        "subject strategy 'evil_20strat' != payload strategy 'evil strat'"
    )
    assert admission_error("sig.ma.test", evil) == (
        "Signal not admitted on sig.ma.test: the subject is not sig.<strategy>.<venue>.<symbol>"
    )
    assert admission_error("nope.x", evil) == "Signal not admitted on nope.x: not a Keel subject"


# --- the bypasses of issue 13, on the secured server ------------------------------------

BAR = "md.bar.test.BTC-USDT.1m"
SIG = "sig.ma_cross.test.BTC-USDT"
OPTIONS = WorkerOptions(metrics_port=None, heartbeat_s=0.2)


@pytest.fixture
def secured(tmp_path: Path) -> Any:
    server = SecuredServer(tmp_path / "nats")
    yield server
    server.stop()


@pytest.fixture
async def fleet(secured: SecuredServer, tmp_path: Path) -> AsyncIterator[list[Worker]]:
    admin = await secured.connect("admin", ensure=True)
    workers = [Worker(role, OPTIONS) for role in scenario_roles(tmp_path)]
    buses = [await secured.connect(w.name, ensure=True) for w in workers]
    tasks = [asyncio.create_task(w.run(b)) for w, b in zip(workers, buses, strict=True)]
    try:
        yield workers
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        for bus in [*buses, admin]:
            await bus.close()


async def forge(bus: Bus, subject: str, event: Event, event_id: str) -> None:
    """Publish ``event`` on ``subject`` with the user's own rights (the server allows it)."""
    ack = await bus.js.publish(
        subject, encode(event), headers=Envelope.root(event_id, event.ts).headers()
    )
    assert ack.seq > 0


async def drained(tap: Bus, workers: list[Worker]) -> None:
    names = {f"{w.name}-{i.stream.lower()}" for w in workers for i in w.inputs}
    assert await wait_drained(tap, names, timeout=30)


async def events(tap: Bus, subject: str, stream: str) -> list[Any]:
    return [i.event async for i in tap.read(subject, stream) if isinstance(i, Stored)]


async def test_the_permission_bypasses_become_dead_letters_and_change_nothing(
    secured: SecuredServer, fleet: list[Worker]
) -> None:
    risk = next(w for w in fleet if w.name == "risk")
    tap = await secured.connect("tap")
    feed = await secured.connect("marketdata")
    strategy = await secured.connect("strategy-ma_cross")
    admin = await secured.connect("admin")
    try:
        await drained(tap, fleet)
        now = scenario.T0
        order = OrderCommand(
            ts=now,
            action="new",
            client_order_id="forged-order",
            strategy="ma_cross",
            venue="test",
            symbol="BTC/USDT",
            side="buy",
            qty=100.0,
        )
        report = ExecutionReport(
            ts=now,
            status="filled",
            client_order_id="forged-fill",
            strategy="ma_cross",
            venue="test",
            symbol="BTC/USDT",
            side="buy",
            order_qty=100.0,
            fill_price=1.0,
            fill_qty=100.0,
            cum_qty=100.0,
        )
        turtle = Signal(
            ts=now, strategy="turtle", venue="test", symbol="BTC/USDT", target_position=3.0
        )
        await forge(feed, BAR, order, "forged-1")
        await forge(feed, BAR, report, "forged-2")
        await forge(feed, BAR, GovernanceCommand(ts=now, action="kill"), "forged-3")
        await forge(strategy, SIG, turtle, "forged-4")
        await drained(tap, fleet)
        assert not risk.decider.state.killed

        # the market trades exactly as if nothing had been forged
        result = await publish_bars(feed, scenario.bars())
        assert result.stored == len(scenario.bars())
        await drained(tap, fleet)
        fills = [e for e in await events(tap, "exec.>", "EXECUTION") if e.fill_qty > 0]
        expected = [(s, q, p) for s, q, p, _ in scenario.EXPECTED_FILLS]
        assert [(f.side, f.fill_qty, f.fill_price) for f in fills] == expected
        assert {e.strategy for e in await events(tap, "ord.>", "ORDERS")} == {"ma_cross"}
        equity = (await tap.last_event("PORTFOLIO", "pf.equity")).event
        assert abs(equity.equity - scenario.EXPECTED_EQUITY) < 1e-9

        # a resume forged on a signal subject does not lift a real kill
        await admin.publish(GovernanceCommand(ts=now, action="kill"), Envelope.root("k", now))
        await drained(tap, fleet)
        assert risk.decider.state.killed
        await forge(strategy, SIG, GovernanceCommand(ts=now, action="resume"), "forged-5")
        await drained(tap, fleet)
        assert risk.decider.state.killed

        letters = [e for e in await events(tap, "sys.dlq.>", "SYSTEM") if type(e) is DeadLetter]
        reasons = {(d.worker, d.subject, d.reason) for d in letters}
        bar_workers = {"strategy-ma_cross", "risk", "execution", "portfolio"}
        for kind in ("OrderCommand", "ExecutionReport", "GovernanceCommand"):
            reason = f"{kind} not admitted on {BAR} (md.bar.* admits Bar)"
            assert {w for w, s, r in reasons if r == reason and s == BAR} == bar_workers
        assert ("risk", SIG, "subject strategy 'ma_cross' != payload strategy 'turtle'") in reasons
        resume = f"GovernanceCommand not admitted on {SIG} (sig.* admits Signal)"
        assert ("risk", SIG, resume) in reasons
        assert len(letters) == 3 * len(bar_workers) + 2
    finally:
        for bus in (tap, feed, strategy, admin):
            await bus.close()
