"""Metrics and traces of real workers on a real nats-server: names, units, labels, bounded
cardinality, one span per handled event on the envelope's trace, OTLP export, and the trace
id ``keel tap --trace`` accepts."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from contracts.envelope import MSG_ID, Envelope, bar_envelope, content_id, trace_id_of
from contracts.events import Bar, Signal
from contracts.system_events import GovernanceCommand, Heartbeat
from eventstore.bus import Bus, Stored
from eventstore.lag import wait_drained
from eventstore.server import EmbeddedServer, free_port
from services.execution.paper_venue import PaperVenueConfig
from services.execution.role import execution_role
from services.portfolio.config import PortfolioConfig
from services.portfolio.role import portfolio_role
from services.risk.limits import RiskLimits
from services.risk.role import risk_role
from services.runtime.role import Role
from services.runtime.telemetry import subject_kind
from services.runtime.tracing import make_tracer_provider
from services.runtime.worker import Worker, WorkerOptions
from services.strategy.host import strategy_role
from strategies.registry import build_strategy
from tests import scenario
from tests.conftest import ROOT, keel
from tests.factories import MINUTE
from tests.test_backtest import csv_text

METERED = WorkerOptions(metrics_port=0, heartbeat_s=0.2)
QUIET = WorkerOptions(metrics_port=None, heartbeat_s=0.5)
DOC = ROOT / "docs" / "observability.md"


def roles(strategy: bool = True) -> list[Role]:
    out = [
        risk_role(RiskLimits(max_position=5)),
        execution_role(PaperVenueConfig(fee_bps=10)),
        portfolio_role(PortfolioConfig(starting_cash=1000)),
    ]
    if strategy:
        built = build_strategy(
            "ma_cross", {"kind": "sma", "fast": 2, "slow": 3, "mode": "long_short"}, "ma"
        )
        out.insert(0, strategy_role(built, []))
    return out


def consumers(workers: list[Worker]) -> set[str]:
    return {f"{w.name}-{i.stream.lower()}" for w in workers for i in w.inputs}


@asynccontextmanager
async def running(url: str, workers: list[Worker]) -> AsyncIterator[Bus]:
    buses = [await Bus.connect(url, name=w.name) for w in workers]
    tasks = [asyncio.create_task(w.run(b)) for w, b in zip(workers, buses, strict=True)]
    bus = await Bus.connect(url, name="test-driver")
    try:
        assert await wait_drained(bus, consumers(workers), timeout=20)
        yield bus
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        for b in [*buses, bus]:
            await b.close()


async def settle(bus: Bus, workers: list[Worker]) -> None:
    assert await wait_drained(bus, consumers(workers), timeout=30)


async def metrics_ports(bus: Bus, names: set[str], timeout: float = 10.0) -> dict[str, int]:
    """Each worker's metrics port, as its heartbeats announce it."""
    ports: dict[str, int] = {}
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        async for item in bus.read("sys.heartbeat.>", "SYSTEM"):
            event = item.event if isinstance(item, Stored) else None
            if isinstance(event, Heartbeat) and event.metrics_port:
                ports[event.worker] = event.metrics_port
        if names <= ports.keys():
            return ports
        await asyncio.sleep(0.05)
    raise AssertionError(f"no heartbeat with a metrics port from {names - ports.keys()}")


Sample = tuple[str, dict[str, str], float]


async def scrape(port: int) -> dict[str, tuple[str, str, list[Sample]]]:
    """Metric families by name: (type, unit, samples)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=5).read())
    return {
        f.name: (f.type, f.unit, [(s.name, s.labels, s.value) for s in f.samples])
        for f in text_string_to_metric_families(body.decode())
    }


async def scrape_polled(
    ports: dict[str, int], stream: str, timeout: float = 10.0
) -> dict[str, dict[str, tuple[str, str, list[Sample]]]]:
    """Every worker's metrics once a heartbeat has polled its consumer of ``stream`` (the
    pending gauge has that stream's series)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        scraped = {name: await scrape(port) for name, port in ports.items()}
        waiting = [
            name
            for name, families in scraped.items()
            if not any(
                labels.get("stream") == stream
                for _, labels, _ in families.get("keel_consumer_pending_messages", ("", "", []))[2]
            )
        ]
        if not waiting:
            return scraped
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no consumer poll of {stream} from {waiting}")
        await asyncio.sleep(0.05)


def value(families: dict, sample: str, **labels: str) -> float:
    """Sum of the samples named ``sample`` whose labels include ``labels``."""
    family = sample.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
    family = re.sub(r"_bucket$", "", family)
    samples = families[family][2]
    matched = [v for n, lab, v in samples if n == sample and labels.items() <= lab.items()]
    assert matched, f"no {sample} with {labels}"
    return sum(matched)


def documented() -> dict[str, tuple[str, set[str]]]:
    """docs/observability.md's metric table: name -> (type, labels)."""
    out = {}
    for row in re.findall(
        r"^\| `(keel_[a-z_]+)` \| (\w+) \|[^|]*\|([^|]*)\|", DOC.read_text(), re.M
    ):
        name, kind, labels = row
        family = name.removesuffix("_total") if kind == "counter" else name
        out[family] = (kind, set(re.findall(r"`([a-z_]+)`", labels)))
    return out


def flip_signals(n: int, first: int = 0) -> list[tuple[Bar | Signal, Envelope]]:
    """Bars with a signal after each one that flips the target: one order per signal, each
    with its own client order id, filled at the next bar's open."""
    out: list[tuple[Bar | Signal, Envelope]] = []
    closes = [10.0 + (i % 3) for i in range(first, first + n + 1)]
    bars = scenario.bars(closes, start=scenario.T0 + first * MINUTE)
    for i, bar in enumerate(bars):
        out.append((bar, bar_envelope(bar)))
        if i < n:
            signal = Signal(
                ts=bar.ts,
                strategy="flip",
                venue=bar.venue,
                symbol=bar.symbol,
                target_position=1.0 if (first + i) % 2 == 0 else -1.0,
                model_tag="m1",
            )
            out.append((signal, Envelope.root(content_id("flip", first + i), bar.ts)))
    return out


async def test_metric_names_units_and_labels_from_real_workers(
    nats_server: EmbeddedServer,
) -> None:
    workers = [Worker(role, METERED) for role in roles()]
    names = {w.name for w in workers}
    async with running(nats_server.url, workers) as bus:
        for bar in scenario.bars():
            await bus.publish(bar, bar_envelope(bar))
            await settle(bus, workers)
        now = scenario.bars()[-1].ts
        await bus.publish(GovernanceCommand(ts=now, action="kill"), Envelope.root("kill-1", now))
        await bus.js.publish("md.bar.test.BTC-USDT.1m", b"not json", headers={MSG_ID: "junk"})
        later = scenario.bars([12.0, 11.0, 10.0, 9.0], start=scenario.T0 + 10 * MINUTE)
        for bar in later:
            await bus.publish(bar, bar_envelope(bar))
            await settle(bus, workers)
        ports = await metrics_ports(bus, names)
        scraped = await scrape_polled(ports, "MARKET")
        equity = (await bus.last_event("PORTFOLIO", "pf.equity")).event

    bars = len(scenario.bars()) + len(later)
    strategy, risk = scraped["strategy-ma"], scraped["risk"]
    execution, portfolio = scraped["execution"], scraped["portfolio"]
    assert (
        value(
            strategy,
            "keel_events_in_total",
            worker="strategy-ma",
            stream="MARKET",
            subject_kind="md.bar",
            event_type="Bar",
        )
        == bars
    )
    assert value(strategy, "keel_events_out_total", subject_kind="sig", event_type="Signal") == 3
    assert value(strategy, "keel_signals_total", strategy="ma", model_tag="ma_cross-sma2x3") == 3
    assert strategy["keel_handler_duration_seconds"][:2] == ("histogram", "seconds")
    assert value(strategy, "keel_handler_duration_seconds_count", event_type="Bar") == bars
    for family in scraped.values():
        assert value(family, "keel_dead_letters_total", stream="MARKET", reason="undecodable") == 1
        assert value(family, "keel_dead_letters_total", reason="handler_error") == 0
        assert value(family, "keel_publish_duplicates_total") == 0
        assert value(family, "keel_consumer_pending_messages", stream="MARKET") >= 0
        assert value(family, "keel_consumer_ack_pending_messages", stream="MARKET") >= 0
        assert value(family, "keel_worker_start_time_seconds") > 0
        assert value(family, "keel_consume_delay_seconds_count", stream="MARKET") == bars

    # latency from the bar, at every hop
    assert value(strategy, "keel_pipeline_latency_seconds_count", event_type="Signal") == 3
    assert value(risk, "keel_pipeline_latency_seconds_count", event_type="OrderCommand") == 2
    assert value(risk, "keel_pipeline_latency_seconds_count", event_type="RiskDecision") == 1
    assert (
        value(execution, "keel_pipeline_latency_seconds_count", event_type="ExecutionReport") >= 2
    )
    assert (
        value(portfolio, "keel_pipeline_latency_seconds_count", event_type="PositionChanged") == 2
    )
    assert risk["keel_pipeline_latency_seconds"][:2] == ("histogram", "seconds")

    # risk: the kill switch, the status it implies, and the rejection it caused
    assert value(risk, "keel_orders_total", strategy="ma", side="sell") == 1
    assert value(risk, "keel_orders_total", strategy="ma", side="buy") == 1
    assert value(risk, "keel_risk_rejections_total", strategy="ma", rule="kill_switch") == 1
    assert value(risk, "keel_kill_switch_engaged", worker="risk") == 1
    assert value(risk, "keel_system_status", status="HALTED") == 1
    assert value(risk, "keel_system_status", status="RUNNING") == 0

    # execution: fills by strategy and model tag, never by order
    assert value(execution, "keel_fills_total", strategy="ma", model_tag="ma_cross-sma2x3") == 2
    assert value(execution, "keel_fills_notional_total", strategy="ma") == pytest.approx(34.0)
    assert value(execution, "keel_execution_reports_total", status="filled") == 2

    # portfolio: the gauges equal the last snapshot in the log
    assert value(portfolio, "keel_portfolio_equity") == pytest.approx(equity.equity)
    assert value(portfolio, "keel_portfolio_cash") == pytest.approx(equity.cash)
    assert value(portfolio, "keel_portfolio_fees") == pytest.approx(0.034)
    assert value(portfolio, "keel_portfolio_realized_pnl") == pytest.approx(-2.0)
    assert value(portfolio, "keel_portfolio_gross_exposure") == pytest.approx(equity.gross_exposure)
    assert 0 <= value(portfolio, "keel_portfolio_drawdown_ratio") < 1
    position = {"strategy": "ma", "venue": "test", "symbol": "BTC/USDT"}
    assert value(portfolio, "keel_position_quantity", **position) == 1.0
    assert value(portfolio, "keel_position_realized_pnl", **position) == -2.0

    # every exported family is documented with its type and exactly its labels
    docs = documented()
    for families in scraped.values():
        for name, (kind, _unit, samples) in families.items():
            if not name.startswith("keel_"):
                continue
            assert name in docs, f"{name} missing from {DOC.name}"
            assert docs[name][0] == kind, name
            labels = {k for _, lab, _ in samples for k in lab} - {"le"}
            assert labels == docs[name][1], f"{name}: exported {labels}, documented {docs[name][1]}"


async def test_many_orders_do_not_create_many_series(nats_server: EmbeddedServer) -> None:
    workers = [Worker(role, METERED) for role in roles(strategy=False)]
    async with running(nats_server.url, workers) as bus:
        ports = await metrics_ports(bus, {w.name for w in workers})

        async def series() -> dict[str, int]:
            counts: dict[str, int] = {}
            for port in ports.values():
                for name, (_, _, samples) in (await scrape(port)).items():
                    counts[name] = counts.get(name, 0) + len(samples)
            return counts

        async def orders() -> set[str]:
            stored = [i async for i in bus.read("ord.cmd.>", "ORDERS") if isinstance(i, Stored)]
            return {o.event.client_order_id for o in stored}

        async def steady(at_least: int) -> dict[str, int]:
            """The series once risk has ordered ``at_least`` times and two scrapes a second
            apart agree: what the settled log left in flight (the fill a last order causes)
            has been observed. A loaded machine can take seconds to start a worker."""
            deadline = asyncio.get_running_loop().time() + 60
            while len(await orders()) < at_least:
                assert asyncio.get_running_loop().time() < deadline, (at_least, len(await orders()))
                await asyncio.sleep(0.2)
            await settle(bus, workers)
            last = await series()
            for _ in range(20):
                await asyncio.sleep(1.0)
                now = await series()
                if now == last:
                    return now
                last = now
            return last

        async def publish(steps: list[tuple[Bar | Signal, Envelope]]) -> None:
            """Each bar consumed before its signal: the workers take their streams in
            batches, and a signal read before its bar finds no price to order at."""
            for event, envelope in steps:
                await bus.publish(event, envelope)
                if isinstance(event, Bar):
                    await settle(bus, workers)

        await publish(flip_signals(10))
        first = await steady(at_least=5)
        await publish(flip_signals(90, first=10))
        after = await steady(at_least=90)
        ordered = await orders()
    assert len(ordered) >= 90
    assert after == first, {k: (first.get(k), v) for k, v in after.items() if first.get(k) != v}
    assert after["keel_orders"] == 2  # buy and sell of one strategy and model tag


def handler_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER]


async def test_one_span_per_handled_event_on_the_envelopes_trace(
    nats_server: EmbeddedServer,
) -> None:
    exporter = InMemorySpanExporter()
    provider = make_tracer_provider("keel-test", exporter, batch=False)
    workers = [Worker(role, QUIET, tracer_provider=provider) for role in roles()]
    async with running(nats_server.url, workers) as bus:
        for bar in scenario.bars():
            await bus.publish(bar, bar_envelope(bar))
            await settle(bus, workers)
        stored = [
            i
            for stream, subject in (
                ("MARKET", "md.>"),
                ("SIGNALS", "sig.>"),
                ("ORDERS", "ord.>"),
                ("EXECUTION", "exec.>"),
                ("PORTFOLIO", "pf.>"),
            )
            async for i in bus.read(subject, stream)
            if isinstance(i, Stored)
        ]
    spans = handler_spans(exporter)
    assert len(spans) == sum(w.processed for w in workers) > 0
    by_event = {s.envelope.event_id: s for s in stored}
    published = {
        s.context.span_id: s for s in exporter.get_finished_spans() if s.kind == SpanKind.PRODUCER
    }
    for span in spans:
        attrs = span.attributes
        item = by_event[attrs["keel.event_id"]]
        trace_hex, span_hex = item.envelope.traceparent.split("-")[1:3]
        assert f"{span.context.trace_id:032x}" == trace_hex
        assert trace_hex == trace_id_of(item.envelope.correlation_id)
        assert f"{span.parent.span_id:016x}" == span_hex  # the causing event's span
        assert attrs["keel.event_type"] == type(item.event).__name__
        assert attrs["keel.subject_kind"] == subject_kind(item.subject)
        assert attrs["keel.worker"] in {w.name for w in workers}
        if item.envelope.causation_id != item.envelope.event_id:  # not a bar: a publish span
            producer = published[span.parent.span_id]
            assert producer.context.trace_id == span.context.trace_id
            assert producer.attributes["keel.event_id"] == item.envelope.event_id
    for worker in workers:
        mine = [s for s in spans if s.attributes["keel.worker"] == worker.name]
        assert len(mine) == worker.processed

    # an order's trace id is the one keel tap --trace follows, back to its bar
    order = next(s for s in spans if s.attributes["keel.event_type"] == "OrderCommand")
    trace_hex = f"{order.context.trace_id:032x}"
    taps = {
        pattern: [
            json.loads(line)
            for line in keel(
                nats_server.url, "tap", pattern, "--trace", trace_hex, "--no-follow", "--json"
            ).stdout.splitlines()
        ]
        for pattern in ("md.>", "sig.>", "ord.>")
    }
    assert all(len(records) == 1 for records in taps.values()), taps
    assert {r["correlation_id"] for records in taps.values() for r in records} == {
        order.attributes["keel.correlation_id"]
    }
    assert taps["ord.>"][0]["id"] == order.attributes["keel.event_id"]
    assert taps["md.>"][0]["id"] == order.attributes["keel.correlation_id"]  # the bar


class _Collector(http.server.BaseHTTPRequestHandler):
    received: dict[str, list[bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.received.setdefault(self.path, []).append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def otlp_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[bytes]]]:
    """A loopback HTTP endpoint that records OTLP requests, set as the export endpoint."""
    received: dict[str, list[bytes]] = {}
    handler = type("Handler", (_Collector,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield received
    server.shutdown()
    server.server_close()


async def test_otlp_export_when_an_endpoint_is_configured(
    nats_server: EmbeddedServer, otlp_endpoint: dict[str, list[bytes]]
) -> None:
    built = build_strategy("ma_cross", {"fast": 2, "slow": 3}, "otlp")
    workers = [Worker(strategy_role(built, []), METERED)]
    async with running(nats_server.url, workers) as bus:
        for bar in scenario.bars():
            await bus.publish(bar, bar_envelope(bar))
        await settle(bus, workers)
    # the worker stopped: its providers flushed traces and metrics
    traces = ExportTraceServiceRequest()
    for body in otlp_endpoint["/v1/traces"]:
        traces.MergeFromString(body)
    spans = [
        span
        for resource in traces.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
        if span.kind == Span.SPAN_KIND_CONSUMER
    ]
    assert {s.trace_id.hex() for s in spans} == {
        trace_id_of(bar_envelope(bar).event_id) for bar in scenario.bars()
    }
    metrics = ExportMetricsServiceRequest()
    for body in otlp_endpoint["/v1/metrics"]:
        metrics.MergeFromString(body)
    names = {m.name for r in metrics.resource_metrics for s in r.scope_metrics for m in s.metrics}
    assert {"keel.events.in", "keel.handler.duration", "keel.pipeline.latency"} <= names


def test_backtest_reports_its_progress(
    tmp_path: Path, otlp_endpoint: dict[str, list[bytes]]
) -> None:
    """``keel backtest --metrics-port`` serves replay metrics; with OTLP configured the
    last values are pushed when the command exits."""
    (tmp_path / "scenario.csv").write_text(csv_text(scenario.bars()))
    (tmp_path / "keel.toml").write_text(scenario.CONFIG.replace("{fill}", "next_open"))
    result = subprocess.run(
        [
            *(sys.executable, "-m", "cli.app", "backtest", "--data", "scenario.csv"),
            *("--symbol", scenario.SYMBOL, "--venue", scenario.VENUE, "--config", "keel.toml"),
            *("--json", "--metrics-port", str(free_port())),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    bars = json.loads(result.stdout.splitlines()[-1])["bars"]
    metrics = ExportMetricsServiceRequest()
    for body in otlp_endpoint["/v1/metrics"]:
        metrics.MergeFromString(body)
    replayed = {
        m.name: sum(p.as_int or p.as_double for p in getattr(m, m.WhichOneof("data")).data_points)
        for r in metrics.resource_metrics
        for s in r.scope_metrics
        for m in s.metrics
        if m.name.startswith("keel.replay")
    }
    assert replayed["keel.replay.bars"] == bars == len(scenario.bars())
    assert replayed["keel.replay.bars_per_second"] > 0


def test_subject_kinds_are_bounded() -> None:
    assert subject_kind("md.bar.sim.BTC-USDT.1m") == "md.bar"
    assert subject_kind("sig.ma_cross.sim.BTC-USDT") == "sig"
    assert subject_kind("ord.cmd.sim.BTC-USDT") == "ord.cmd"
    assert subject_kind("gov.cmd.kill") == "gov.cmd"
    assert subject_kind("md.whatever123.x") == "other"
    assert subject_kind("nonsense") == "other"


def test_docs_list_metrics_and_dashboards() -> None:
    text = DOC.read_text()
    for dashboard in sorted((ROOT / "infra" / "grafana" / "dashboards").glob("*.json")):
        assert json.loads(dashboard.read_text())["title"] in text
    assert Path(ROOT / "README.md").read_text().count("docs/observability.md") >= 1
