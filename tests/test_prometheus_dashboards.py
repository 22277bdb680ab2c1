"""The Grafana dashboards against a real Prometheus scraping a running fleet: every PromQL
expression of every panel returns data. Plus the shape of the provisioning files and the
OpenTelemetry Collector config.

The Prometheus binary comes from Debian's ``prometheus`` package (``.ci/run`` installs it
when it runs as root); without it the live test skips and says so.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from contracts.envelope import Envelope, content_id
from contracts.events import RiskDecision
from contracts.system_events import GovernanceCommand, Heartbeat
from eventstore.bus import Bus, Stored
from eventstore.lag import wait_drained
from eventstore.server import EmbeddedServer, free_port
from eventstore.tally import count
from services.config import load_config
from services.fleet import Fleet, WorkerProcess, consumer_names, fleet_plan
from tests.conftest import ROOT

GRAFANA = ROOT / "infra" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
COLLECTOR = ROOT / "infra" / "otel-collector" / "config.yaml"
JOB = "keel"  # infra/prometheus/prometheus.yml; the dashboards select up{job="keel"}

FEED = ("--pace-ms", "50", "--bars", "20000", "--interval", "1s")
"""Live synthetic 1s bars, 20 a second: traffic through every scrape."""

GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__range": "5m", "$__interval": "5s"}

FLEET_CONFIG = """
[market]
symbols = ["BTC/USDT", "ETH/USDT"]
interval = "1s"

[[strategies]]
name = "ma_cross"
instance = "fast"
params = { kind = "sma", fast = 2, slow = 3, mode = "long_short", qty = 1 }

[portfolio]
starting_cash = 100000
"""


def panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panels(panel)  # rows hold panels


def expressions() -> list[tuple[str, str, str]]:
    """(dashboard, panel, PromQL) for every target of every panel."""
    out = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                out.append((dashboard["title"], panel["title"], target["expr"]))
    return out


def promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


# --- the files ---------------------------------------------------------------------------


def test_five_dashboards_on_the_provisioned_data_source() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    titles = {json.loads(p.read_text())["title"] for p in DASHBOARDS}
    assert titles == {
        "Keel / Fleet health",
        "Keel / Trading performance",
        "Keel / Risk",
        "Keel / Latency",
        "Keel / Governance",
    }
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        ids = [p["id"] for p in panels(dashboard)]
        assert len(set(ids)) == len(ids), path.name
        for panel in panels(dashboard):
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == source["uid"]
                assert target["expr"].strip()
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/keel.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_collector_pipelines_use_what_they_define() -> None:
    config = yaml.safe_load(COLLECTOR.read_text())
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    service = config["service"]
    assert set(service["extensions"]) <= config["extensions"].keys()
    assert {"traces", "metrics"} <= service["pipelines"].keys()
    for pipeline in service["pipelines"].values():
        assert set(pipeline["receivers"]) <= config["receivers"].keys()
        assert set(pipeline["processors"]) <= config["processors"].keys()
        assert set(pipeline["exporters"]) <= config["exporters"].keys()


def test_scrape_config_is_valid_for_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found (Debian's prometheus package ships it)")
    result = subprocess.run(
        [promtool, "check", "config", str(ROOT / "infra/prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    assert JOB in [job["job_name"] for job in jobs["scrape_configs"]]


# --- a real Prometheus against a running fleet ------------------------------------------


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
    )
    if found is None:
        pytest.skip(
            "prometheus binary not found: install Debian's prometheus package "
            "(apt-get install -y prometheus; .ci/run does it when it runs as root)"
        )
    return found


def query(port: int, expr: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # a bad expression: 400 with the reason
        return json.loads(exc.read())


async def start_fleet(tmp_path: Path, fleet: Fleet, bus: Bus) -> tuple[Path, list[WorkerProcess]]:
    """FLEET_CONFIG's workers as processes in ``fleet``, once their consumers are drained;
    the config's path and the workers."""
    config_path = tmp_path / "keel.toml"
    config_path.write_text(FLEET_CONFIG)
    config = load_config(config_path)
    plan = fleet_plan(config, config_path)
    for worker in plan:
        worker.env = {"OTEL_EXPORTER_OTLP_ENDPOINT": ""}
        fleet.start(worker)
    assert await wait_drained(bus, consumer_names(config), timeout=60), "fleet not up"
    return config_path, plan


def start_prometheus(
    binary: str, tmp_path: Path, ports: dict[str, int], rule_files: tuple[Path, ...] = ()
) -> tuple[subprocess.Popen, int]:
    """A real Prometheus scraping the workers' ``ports`` every second as job ``keel`` (with
    ``rule_files`` evaluated every second), its log in ``tmp_path``; and its web port."""
    settings: dict = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}}
    if rule_files:
        settings["rule_files"] = [str(f) for f in rule_files]
    settings["scrape_configs"] = [
        {
            "job_name": JOB,
            "static_configs": [
                {"targets": [f"127.0.0.1:{port}"], "labels": {"service": name}}
                for name, port in sorted(ports.items())
            ],
        }
    ]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(settings))
    web = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "wb"),  # noqa: SIM115
    )
    return process, web


def stop_prometheus(process: subprocess.Popen | None) -> None:
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def metrics_ports(bus: Bus, names: set[str], timeout: float = 60) -> dict[str, int]:
    """The workers' metrics ports, from their heartbeats."""
    deadline = time.monotonic() + timeout
    ports: dict[str, int] = {}
    while time.monotonic() < deadline:
        async for item in bus.read("sys.heartbeat.>", "SYSTEM"):
            event = item.event if isinstance(item, Stored) else None
            if isinstance(event, Heartbeat) and event.metrics_port and event.status == "running":
                ports[event.worker] = event.metrics_port
        if names <= ports.keys():
            return ports
        await asyncio.sleep(0.2)
    raise AssertionError(f"no metrics port announced by {sorted(names - ports.keys())}")


async def wait_for(condition, what: str, fleet: Fleet, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert not fleet.failed(), [fleet.log_tail(w, 10) for w in fleet.failed()]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_every_dashboard_expression_returns_data(
    tmp_path: Path, nats_server: EmbeddedServer, bus: Bus
) -> None:
    binary = prometheus_binary()
    fleet = Fleet(nats_server.url, tmp_path / "logs")
    prometheus: subprocess.Popen | None = None
    try:
        config_path, plan = await start_fleet(tmp_path, fleet, bus)
        fleet.start(
            WorkerProcess(
                "marketdata",
                [*("run", "marketdata", "--config", str(config_path), "--live"), *FEED],
            )
        )
        ports = await metrics_ports(bus, {w.name for w in plan})

        prometheus, web = start_prometheus(binary, tmp_path, ports)

        async def fills() -> bool:
            return await count(bus, "EXECUTION", "exec.>") >= 4

        await wait_for(fills, "fills", fleet)
        now = time.time_ns()
        kill = GovernanceCommand(ts=now, action="kill", reason="dashboard test")
        await bus.publish(kill, Envelope.root(content_id("test-kill", now), now))

        async def rejected() -> bool:
            async for item in bus.read("ord.risk.>", "ORDERS"):
                if isinstance(item, Stored) and isinstance(item.event, RiskDecision):
                    return True
            return False

        await wait_for(rejected, "a risk rejection after the kill", fleet)

        wanted = expressions()
        assert len(wanted) >= 30
        missing: dict[str, str] = {}
        deadline = time.monotonic() + 90
        while True:
            assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            missing = {}
            for dashboard, panel, expr in wanted:
                try:
                    answer = await asyncio.to_thread(query, web, promql(expr))
                except OSError as exc:  # Prometheus still starting
                    missing[expr] = f"{dashboard} / {panel}: {exc}"
                    continue
                assert answer.get("status") == "success", f"{dashboard} / {panel}: {expr}: {answer}"
                if not answer["data"]["result"]:
                    missing[expr] = f"{dashboard} / {panel}"
            if not missing or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        assert not missing, "no data for:\n" + "\n".join(f"{w}: {e}" for e, w in missing.items())
    finally:
        stop_prometheus(prometheus)
        fleet.stop()
