"""The dead-man and infrastructure alerts (infra/prometheus/alerts.yml): promtool checks
them and runs their unit tests (alerts.test.yml: each rule fires on synthetic series, not
before its ``for:``); a real Prometheus evaluates them against a running fleet, where a
kill, a worker killed with SIGKILL and a stale feed make their alerts fire and the live
workers' heartbeats keep ``KeelWorkerHung`` quiet; amtool checks
infra/alertmanager/alertmanager.yml and a real Alertmanager delivers a critical alert to a
loopback chat webhook.

The binaries come from Debian's ``prometheus`` package (prometheus, promtool) and
``prometheus-alertmanager`` (alertmanager, amtool); a test whose binary is missing skips
and says which package has it.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from contracts.envelope import Envelope, content_id
from contracts.events import FeedStatus
from contracts.system_events import GovernanceCommand
from eventstore.bus import Bus
from eventstore.server import EmbeddedServer, free_port
from services.fleet import Fleet
from tests.conftest import ROOT
from tests.test_prometheus_dashboards import (
    metrics_ports,
    prometheus_binary,
    query,
    start_fleet,
    start_prometheus,
    stop_prometheus,
)

PROMETHEUS = ROOT / "infra" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts.test.yml"
ALERTMANAGER = ROOT / "infra" / "alertmanager" / "alertmanager.yml"
OBSERVABILITY = ROOT / "docs" / "observability.md"
CHAT_SECRET = "/run/secrets/alertmanager_chat_url"
SEVERITIES = {"critical", "error", "warning"}


def rules() -> list[dict]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def binary(name: str, package: str, *aliases: str) -> str:
    for candidate in (name, *aliases):
        found = shutil.which(candidate)
        if found:
            return found
    pytest.skip(f"{name} not found: install Debian's {package} package (apt-get install {package})")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


# --- the files ---------------------------------------------------------------------------


def test_every_rule_has_a_priority_a_summary_and_numbers_from_documented_metrics() -> None:
    documented = set(re.findall(r"^\| `(keel_[a-z_]+)` \|", OBSERVABILITY.read_text(), re.M))
    documented |= {name.removesuffix("_total") for name in documented}
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        labels, notes = rule["labels"], rule["annotations"]
        assert labels["severity"] in SEVERITIES, rule["alert"]
        assert labels["priority"] == labels["severity"].upper(), rule["alert"]
        assert notes["summary"] and "{{ $value" in notes["description"], rule["alert"]
        used = set(re.findall(r"\b(keel_[a-z_]+)", rule["expr"]))
        assert used or rule["expr"].startswith('up{job="keel"'), rule["alert"]
        assert used <= documented, f"{rule['alert']}: {used - documented} not in observability.md"


def test_the_issues_seven_conditions_each_have_a_rule() -> None:
    names = {rule["alert"] for rule in rules()}
    assert {
        "KeelWorkerDown",
        "KeelMarketDataStale",
        "KeelConsumerLag",
        "KeelDeadLetters",
        "KeelHalted",
        "KeelVenueHalted",
        "KeelNotifierSilent",
    } <= names


def test_prometheus_loads_the_rules_and_sends_to_the_compose_alertmanager() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (manager,) = config["alerting"]["alertmanagers"]
    (target,) = manager["static_configs"][0]["targets"]
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    host, port = target.split(":")
    assert host in services and port == "9093"
    volumes = services["prometheus"]["volumes"]
    assert "./infra/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in volumes
    mounted = services["alertmanager"]["volumes"]
    assert "./infra/alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro" in mounted
    assert services["alertmanager"]["secrets"] == [Path(CHAT_SECRET).name]


def test_rules_pass_promtool_check() -> None:
    promtool = binary("promtool", "prometheus")
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout
    result = run(promtool, "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_rule_fires_in_promtools_unit_tests() -> None:
    promtool = binary("promtool", "prometheus")
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in cases
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert fired == {rule["alert"] for rule in rules()}
    result = run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alertmanager_config_passes_amtool_and_routes_every_severity() -> None:
    amtool = binary("amtool", "prometheus-alertmanager")
    result = run(amtool, "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr
    for severity in SEVERITIES:
        result = run(
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER}",
            "--verify.receivers=keel-chat",
            f"severity={severity}",
            "alertname=KeelHalted",
        )
        assert result.returncode == 0, result.stdout + result.stderr


# --- a real Alertmanager and a loopback chat webhook --------------------------------------


@asynccontextmanager
async def chat_webhook() -> AsyncIterator[tuple[str, list[dict]]]:
    """A loopback Slack-compatible incoming webhook that records what it is sent."""
    received: list[dict] = []

    async def post(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks/keel", post)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hooks/keel", received
    finally:
        await runner.cleanup()


async def test_alertmanager_delivers_a_critical_to_the_chat_webhook_at_once(
    tmp_path: Path,
) -> None:
    alertmanager = binary("alertmanager", "prometheus-alertmanager", "prometheus-alertmanager")
    async with chat_webhook() as (url, received):
        secret = tmp_path / "chat_url"
        secret.write_text(url)
        config = tmp_path / "alertmanager.yml"
        config.write_text(ALERTMANAGER.read_text().replace(CHAT_SECRET, str(secret)))
        web_port = free_port()
        process = subprocess.Popen(
            [
                alertmanager,
                f"--config.file={config}",
                f"--storage.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
                "--cluster.listen-address=",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "alertmanager.log", "wb"),  # noqa: SIM115
        )
        try:
            api = f"http://127.0.0.1:{web_port}/api/v2"
            alert = {
                "labels": {
                    "alertname": "KeelHalted",
                    "severity": "critical",
                    "priority": "CRITICAL",
                    "source": "risk",
                },
                "annotations": {
                    "summary": "Keel is HALTED by risk",
                    "description": "risk reports the system status HALTED (value 1)",
                },
            }
            body = json.dumps([alert]).encode()
            sent_at = 0.0
            deadline = time.monotonic() + 30
            while not received:
                assert process.poll() is None, (tmp_path / "alertmanager.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "alertmanager.log").read_text()
                if not sent_at:
                    request = urllib.request.Request(
                        f"{api}/alerts", body, {"Content-Type": "application/json"}
                    )
                    try:
                        await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)
                        sent_at = time.monotonic()
                    except OSError:  # still starting
                        pass
                await asyncio.sleep(0.1)
            delivered_s = time.monotonic() - sent_at
            (message,) = received
            (attachment,) = message["attachments"]
            assert attachment["title"] == "[CRITICAL] KeelHalted (1)"
            assert (
                "Keel is HALTED by risk: risk reports the system status HALTED"
                in (attachment["text"])
            )
            assert delivered_s < 10, delivered_s  # group_wait 0s for critical
            print(f"delivered after {delivered_s:.2f} s")
            status = await asyncio.to_thread(get_json, f"{api}/status")
            assert url not in json.dumps(status), "the webhook URL leaked into the status"
        finally:
            process.terminate()
            process.wait(timeout=10)


# --- a real Prometheus against a running fleet ------------------------------------------


def firing(port: int, state: str = "firing") -> dict[str, list[dict]]:
    """The alerts in ``state`` (``firing``, ``pending``) by name."""
    alerts = get_json(f"http://127.0.0.1:{port}/api/v1/alerts")["data"]["alerts"]
    out: dict[str, list[dict]] = {}
    for alert in alerts:
        if alert["state"] == state:
            out.setdefault(alert["labels"]["alertname"], []).append(alert)
    return out


async def test_halt_dead_worker_and_stale_feed_fire_in_a_real_prometheus(
    tmp_path: Path, nats_server: EmbeddedServer, bus: Bus
) -> None:
    prometheus_path = prometheus_binary()
    fleet = Fleet(nats_server.url, tmp_path / "logs")
    prometheus: subprocess.Popen | None = None
    try:
        _, plan = await start_fleet(tmp_path, fleet, bus)
        ports = await metrics_ports(bus, {w.name for w in plan})
        prometheus, web_port = start_prometheus(prometheus_path, tmp_path, ports, (RULES,))

        now = time.time_ns()
        kill = GovernanceCommand(ts=now, action="kill", reason="alert rules test")
        await bus.publish(kill, Envelope.root(content_id("alert-kill", now), now))
        stale = FeedStatus(ts=now, venue="sim", symbol="BTC/USDT", state="stale", reason="test")
        await bus.publish(stale, Envelope.root(content_id("alert-stale", now), now))
        (portfolio,) = [w for w in fleet.workers if w.name == "portfolio"]
        assert portfolio.proc is not None
        portfolio.proc.kill()  # a dead worker: no goodbye, its endpoint simply stops
        killed_at = time.monotonic()

        wanted = {"KeelHalted", "KeelWorkerDown", "KeelMarketDataStale"}
        seen: dict[str, float] = {}
        alerts: dict[str, list[dict]] = {}
        deadline = killed_at + 90  # the longest `for:` here is 30 s
        while not wanted <= seen.keys() and time.monotonic() < deadline:
            assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                alerts = await asyncio.to_thread(firing, web_port)
            except OSError:  # Prometheus still starting
                alerts = {}
            for name in wanted & alerts.keys() - seen.keys():
                seen[name] = time.monotonic() - killed_at
            await asyncio.sleep(0.5)
        assert wanted <= seen.keys(), f"fired {sorted(seen)} of {sorted(wanted)}"

        (halted,) = alerts["KeelHalted"]
        assert halted["labels"]["source"] == "risk"
        assert halted["labels"]["priority"] == "CRITICAL"
        down = {a["labels"]["service"] for a in alerts["KeelWorkerDown"]}
        assert down == {"portfolio"}
        (stale_alert,) = alerts["KeelMarketDataStale"]
        assert stale_alert["labels"]["symbol"] == "BTC/USDT"
        assert "has been stale for at least 30 s" in stale_alert["annotations"]["description"]
        assert seen["KeelWorkerDown"] >= 30  # not before its `for:`

        # the live workers beat: KeelWorkerHung's expression holds for none of them
        ages = await asyncio.to_thread(query, web_port, "time() - keel_heartbeat_timestamp_seconds")
        beat_age = {r["metric"]["worker"]: float(r["value"][1]) for r in ages["data"]["result"]}
        assert {w.name for w in plan} - {"portfolio"} <= beat_age.keys(), beat_age
        assert max(beat_age.values()) < 45, beat_age
        for state in ("pending", "firing"):
            hung = (await asyncio.to_thread(firing, web_port, state)).get("KeelWorkerHung")
            assert not hung, hung
        print(f"fired after the kill (s): { {k: round(v, 1) for k, v in seen.items()} }")
    finally:
        stop_prometheus(prometheus)
        fleet.stop()
