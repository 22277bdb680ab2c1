"""``keel reconcile VENUE [--adopt --reason]`` and ``keel kill --cancel-open/--flatten``: what
they show and the events they record, against a real nats-server."""

from __future__ import annotations

import asyncio
import time

from contracts.envelope import Envelope, content_id
from contracts.venue_events import Discrepancy, KillSwitch, VenueAdoption, VenueStatus
from eventstore.bus import Bus
from eventstore.log_reader import last_or_none
from eventstore.server import EmbeddedServer
from tests.conftest import keel
from tests.test_cli import assert_one_error

S = 1_000_000_000


async def record(bus: Bus, *events: object) -> None:
    for n, event in enumerate(events):
        assert await bus.publish(event, Envelope.root(content_id("t", n, event.ts), event.ts))  # type: ignore[arg-type,attr-defined]


async def test_reconcile_shows_the_findings_since_the_last_adoption_and_exits_1_when_halted(
    bus: Bus, nats_server: EmbeddedServer
) -> None:
    now = time.time_ns()
    before = Discrepancy(
        ts=now - 9 * S, venue="bin", kind="missed_fill", action="inferred fill", trade_id="7"
    )
    adopted = VenueAdoption(ts=now - 8 * S, venue="bin", reason="checked the statement")
    mismatch = Discrepancy(
        ts=now - 2 * S,
        venue="bin",
        kind="position_mismatch",
        action="halted",
        symbol="BTC/USDT:USDT",
        venue_value=0.5,
        keel_value=0.3,
        detail="beyond tolerance 1e-06",
    )
    external = Discrepancy(
        ts=now - S, venue="bin", kind="external_order", action="recorded", symbol="ETH/USDT"
    )
    halted = VenueStatus(
        ts=now, venue="bin", mode="sandbox", state="halted", reason="position mismatch"
    )
    await record(bus, before, adopted, mismatch, external, halted)

    shown = await asyncio.to_thread(keel, nats_server.url, "reconcile", "bin")
    assert shown.returncode == 1, shown.stdout + shown.stderr  # halted
    out = " ".join(shown.stdout.split())
    assert "venue bin mode SANDBOX gateway halted (position mismatch)" in out
    assert "last adoption" in out and "checked the statement" in out
    assert "2 discrepancies since the last adoption" in out
    assert "position_mismatch BTC/USDT:USDT 0.5 0.3 halted" in out
    assert "external_order" in out and "missed_fill" not in out  # before the adoption

    adopt = await asyncio.to_thread(
        keel, nats_server.url, "reconcile", "bin", "--adopt", "--reason", "venue is right"
    )
    assert adopt.returncode == 0, adopt.stderr
    last = await last_or_none(bus, "VENUE", "venue.adopt.bin")
    assert last is not None and isinstance(last.event, VenueAdoption)
    assert (last.event.reason, last.event.issued_by) == ("venue is right", "cli")


async def test_reconcile_bad_input_is_one_line(bus: Bus, nats_server: EmbeddedServer) -> None:
    url = nats_server.url
    cases = [
        (("reconcile", "bin", "--adopt"), "--adopt needs --reason"),
        (("reconcile", "bin", "--adopt", "--reason", "  "), "--adopt needs --reason"),
        (("reconcile", "bin", "--reason", "why"), "--reason goes with --adopt"),
        (("reconcile", "no such"), "must match"),
    ]
    results = await asyncio.gather(*(asyncio.to_thread(keel, url, *args) for args, _ in cases))
    for result, (_, needle) in zip(results, cases, strict=True):
        assert_one_error(result, needle)
    quiet = await asyncio.to_thread(keel, url, "reconcile", "other")
    assert quiet.returncode == 0 and "no gateway has reported on venue other" in quiet.stdout


async def test_kill_cancel_open_and_flatten_record_the_kill_switch(
    bus: Bus, nats_server: EmbeddedServer
) -> None:
    url = nats_server.url
    plain = await asyncio.to_thread(keel, url, "kill", "--reason", "plain")
    assert plain.returncode == 0, plain.stderr
    assert await last_or_none(bus, "VENUE", "venue.kill") is None  # risk's halt only
    cancel = await asyncio.to_thread(keel, url, "kill", "--cancel-open", "--reason", "drill")
    assert cancel.returncode == 0 and "cancel of open entries" in cancel.stdout
    first = await last_or_none(bus, "VENUE", "venue.kill")
    assert first is not None and isinstance(first.event, KillSwitch)
    assert (first.event.flatten, first.event.reason) == (False, "drill")
    flat = await asyncio.to_thread(keel, url, "kill", "--flatten")
    assert flat.returncode == 0 and "flattening" in flat.stdout
    second = await last_or_none(bus, "VENUE", "venue.kill")
    assert second is not None and isinstance(second.event, KillSwitch) and second.event.flatten
    assert (await bus.js.stream_info("GOVERNANCE")).state.messages == 3  # risk halts each time
