"""The venue gateway's heartbeat and metrics, against the Binance fake on a real nats-server:
its beats on the bus and in ``keel status``, and its ``/metrics`` (a real HTTP scrape of the
Prometheus endpoint) moving with a submit, a fill, a refusal, a rate limit, REST polls
and a halt; no credential and no client id in the scrape."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request

import msgspec
from nats.js.api import DeliverPolicy
from prometheus_client.parser import text_string_to_metric_families

from contracts.system_events import Heartbeat
from eventstore.log_reader import read_caught_up
from services.fleet_status import collect
from services.venues.gateway.telemetry import HEARTBEAT_S
from services.venues.gateway.worker import Gateway
from tests.conftest import ROOT
from tests.test_gateway import CONFIG, KEY, VENUE, Harness, harness, secret_for, until

__all__ = ["harness"]  # the fixture, imported for pytest

WORKER = f"gateway-{VENUE}"
DASHBOARD = ROOT / "infra" / "grafana" / "dashboards" / "fleet-health.json"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


async def scrape(port: int) -> tuple[str, Samples]:
    body = await asyncio.to_thread(scrape_text, port)
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return body, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    found = [v for (n, lab), v in samples.items() if n == name and wanted <= lab]
    assert found, f"no {name} with {labels}"
    return sum(found)


def dashboard_metrics() -> set[str]:
    """The gateway metrics the fleet dashboard's panels query (every panel falls back to 0
    without a gateway, so the dashboards' live test cannot tell a misspelt name)."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    return set(re.findall(r"keel_gateway_\w+", exprs))


async def beats(h: Harness) -> list[Heartbeat]:
    found = await read_caught_up(h.bus, "SYSTEM", f"sys.heartbeat.{WORKER}", DeliverPolicy.ALL)
    return [s.event for s in found if isinstance(s.event, Heartbeat)]


async def scraped_until(port: int, check, what: str, timeout: float = 15.0) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        _, samples = await scrape(port)
        try:
            if check(samples):
                return samples
        except AssertionError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_the_gateway_beats_and_its_metrics_follow_its_orders(harness: Harness) -> None:
    gateway: Gateway = await harness.start(msgspec.structs.replace(CONFIG, poll_after_s=5.0))
    port = gateway.metrics.port
    assert port > 0

    async def beating() -> bool:
        return any(b.metrics_port == port and b.status == "running" for b in await beats(harness))

    await until(beating, "a heartbeat naming the metrics port")
    report = await collect(harness.bus)
    (row,) = [w for w in report.workers if w.worker == WORKER]
    assert row.alive and row.state == "running" and row.metrics_port == port
    later = await collect(harness.bus, now_ns=time.time_ns() + int(10 * HEARTBEAT_S * 1e9))
    assert [w.state for w in later.workers if w.worker == WORKER] == ["down"]

    _, before = await scrape(port)
    labels = {"worker": WORKER, "venue": VENUE}
    assert value(before, "keel_gateway_reconciliations_total", result="ok", **labels) >= 1
    assert value(before, "keel_gateway_reconciliation_duration_seconds_count") >= 1
    assert value(before, "keel_gateway_state", state="running") == 1
    assert value(before, "keel_gateway_halted") == 0
    assert value(before, "keel_gateway_stream_up") == 1
    assert value(before, "keel_gateway_orders_total", action="new") == 0

    # a submit and its fill; a refusal (insufficient funds); a rate limit waited out
    order = await harness.send(qty=0.01)
    vcid = order.venue_client_id
    await harness.answer(vcid, lambda a: a.kind == "fill", "the fill")
    poor = await harness.send(qty=1_000_000.0)
    await harness.answer(poor.venue_client_id, lambda a: a.kind == "rejected", "the refusal")
    harness.fake.faults.http_errors.append(429)
    limited = await harness.send(order_type="limit", limit_price=1.0, qty=10.0)
    await harness.answer(limited.venue_client_id, lambda a: a.kind == "accepted", "the order")

    def moved(s: Samples) -> bool:
        return (
            value(s, "keel_gateway_orders_total", action="new") == 3
            and value(s, "keel_gateway_answers_total", kind="accepted", source="submit") >= 2
            and value(s, "keel_gateway_answers_total", kind="fill") >= 1
            and value(s, "keel_gateway_answers_total", kind="rejected", source="submit") == 1
            and value(s, "keel_gateway_rest_errors_total", outcome="rejected") >= 1
            and value(s, "keel_gateway_backoffs_total") >= 1
            and value(s, "keel_gateway_stream_frames_total") >= 1
            and value(s, "keel_gateway_legs_open") == 1  # the resting limit order
        )

    after = await scraped_until(port, moved, "the counters after a submit and a fill")
    assert value(after, "keel_gateway_rest_errors_total", error="InsufficientFunds") >= 1
    assert value(after, "keel_gateway_stream_silence_seconds") >= 0
    assert value(after, "keel_gateway_legs_in_doubt") == 0

    # the resting order and a private stream that says nothing: REST polls stand in
    polled = await scraped_until(
        port, lambda s: value(s, "keel_gateway_polls_total") >= 1, "a REST poll"
    )
    assert value(polled, "keel_gateway_stream_silence_seconds") >= 5.0

    # a balance changed behind Keel's back: a discrepancy and a halt
    gateway.config = msgspec.structs.replace(gateway.config, reconcile_every_s=2.0)
    base = harness.fake.specs[harness.symbol].base
    harness.fake.account.faults.set_balance(base, 123.0)
    halted = await scraped_until(
        port, lambda s: value(s, "keel_gateway_halted") == 1, "the halt", timeout=20
    )
    assert value(halted, "keel_gateway_discrepancies_total", kind="balance_mismatch") >= 1
    assert value(halted, "keel_gateway_state", state="halted") == 1
    assert value(halted, "keel_gateway_state", state="running") == 0

    body, samples = await scrape(port)
    wanted = dashboard_metrics()
    assert len(wanted) >= 10
    assert wanted <= {name for name, _ in samples}
    secret = secret_for(harness.fake)
    for private in (KEY, secret, vcid, poor.venue_client_id):
        assert private not in body
    bounded = {"worker", "venue", "action", "kind", "source", "result", "state", "error"}
    bounded |= {"outcome", "le"}
    assert {k for n, lab in samples if n.startswith("keel_") for k, _ in lab} <= bounded

    await harness.stop()
    assert (await beats(harness))[-1].status == "stopped"
    final = await collect(harness.bus)
    assert [w.state for w in final.workers if w.worker == WORKER] == ["stopped"]
