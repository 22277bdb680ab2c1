"""``keel status`` against a real nats-server: every section read from the log (heartbeats,
consumer lag, system status and the kill switch, equity and positions, dead letters and risk
rejections), the rich screen, an empty log, an unreachable server, and a demo's leftovers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from nats.js.api import AckPolicy, ConsumerConfig

from contracts.envelope import Envelope, content_id
from contracts.events import EquitySnapshot, Event, PositionChanged, RiskDecision
from contracts.system_events import DeadLetter, GovernanceCommand, Heartbeat, SystemStatus
from eventstore.bus import Bus
from eventstore.log_reader import tail
from eventstore.server import URL_ENV, EmbeddedServer
from services.fleet_status import collect
from tests.conftest import keel
from tests.factories import ohlc_bar
from tests.test_cli import assert_one_error, table_row

S = 1_000_000_000


async def put(bus: Bus, event: Event, *key: object) -> None:
    assert await bus.publish(event, Envelope.root(content_id("test", *key), event.ts))


def beat(ts: int, worker: str, instance: str, seq: int, processed: int, **kw: object) -> Heartbeat:
    return Heartbeat(ts=ts, worker=worker, instance=instance, seq=seq, processed=processed, **kw)


async def populate(bus: Bus, url: str) -> int:
    """A log with something in every section; returns the wall time the fresh beats carry."""
    now = time.time_ns()
    # heartbeats: risk beats twice (the latest counts), two strategy replicas, execution went
    # silent a minute ago (its older instance is neither recent nor its subject's last: not
    # listed), portfolio stopped cleanly
    await put(bus, beat(now - 2 * S, "risk", "h-1", 1, 5, metrics_port=9101), "hb", 1)
    await put(bus, beat(now, "risk", "h-1", 2, 42, metrics_port=9101), "hb", 2)
    await put(bus, beat(now, "strategy-ma", "h-2", 7, 10), "hb", 3)
    await put(bus, beat(now, "strategy-ma", "h-3", 8, 11), "hb", 4)
    await put(bus, beat(now - 300 * S, "execution", "old-9", 3, 1), "hb", 5)
    await put(bus, beat(now - 60 * S, "execution", "h-4", 30, 77), "hb", 6)
    await put(bus, beat(now - 1 * S, "portfolio", "h-5", 0, 99, status="stopped"), "hb", 7)
    # equity: the latest snapshot counts
    for i, equity in enumerate((100_000.0, 100_500.5)):
        snap = EquitySnapshot(
            ts=now - (1 - i) * S,
            cash=50_000.0,
            equity=equity,
            realized_pnl=12.5,
            unrealized_pnl=488.0,
            fees=3.25,
            gross_exposure=50_500.5,
        )
        await put(bus, snap, "eq", i)
    # positions: BTC open (moved twice), ETH opened then closed
    for i, (symbol, qty, avg) in enumerate(
        (("BTC/USDT", 1.0, 42_000.0), ("ETH/USDT", 2.0, 2_500.0), ("BTC/USDT", 1.5, 42_100.0))
    ):
        position = PositionChanged(
            ts=now + i, venue="sim", symbol=symbol, qty=qty, avg_price=avg, realized_pnl=0.0
        )
        await put(bus, position, "pos", i)
    closed = PositionChanged(
        ts=now + 5, venue="sim", symbol="ETH/USDT", qty=0.0, avg_price=0.0, realized_pnl=7.0
    )
    await put(bus, closed, "pos", 9)
    # dead letters (more than shown) and risk rejections
    for i in range(15):
        worker = "risk" if i % 2 else "execution"
        letter = DeadLetter(
            ts=now + i, worker=worker, subject=f"sig.x.{i}", reason=f"bad payload {i}", payload=b"{"
        )
        await put(bus, letter, "dlq", i)
    for i in range(3):
        rejection = RiskDecision(
            ts=now + i,
            approved=False,
            strategy="ma",
            venue="sim",
            symbol="BTC/USDT",
            client_order_id=f"ma-{i}",
            rule="max_position",
            reason=f"position {i + 6} > 5",
        )
        await put(bus, rejection, "rej", i)
    # consumer lag: a durable consumer with 4 bars stored, one delivered and not acknowledged
    for i in range(4):
        await put(bus, ohlc_bar(i, 100.0, 101.0, 99.0, 100.5, volume=3.0, venue="sim"), "bar", i)
    await bus.js.add_consumer(
        "MARKET",
        ConsumerConfig(
            durable_name="risk-market", filter_subject="md.bar.>", ack_policy=AckPolicy.EXPLICIT
        ),
    )
    sub = await bus.js.pull_subscribe_bind("risk-market", stream="MARKET")
    assert len(await sub.fetch(1, timeout=2)) == 1
    await _until_lag(bus, "risk-market", pending=3, ack_pending=1)
    # the kill switch, through the real command
    killed = keel(url, "kill", "--reason", "fat finger")
    assert killed.returncode == 0, killed.stderr
    return now


async def _until_lag(bus: Bus, name: str, pending: int, ack_pending: int) -> None:
    deadline = time.monotonic() + 5
    while True:
        info = await bus.js.consumer_info("MARKET", name)
        if (info.num_pending, info.num_ack_pending) == (pending, ack_pending):
            return
        assert time.monotonic() < deadline, info
        await asyncio.sleep(0.02)


def status_json(url: str, *args: str, cwd: Path | None = None) -> dict:
    result = keel(url, "status", "--json", *args, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


async def test_status_json_shows_every_section(nats_server: EmbeddedServer, bus: Bus) -> None:
    await populate(bus, nats_server.url)
    report = status_json(nats_server.url, "--errors", "5")

    assert report["empty"] is False
    assert report["stale_after_s"] == 6.0

    workers = {(w["worker"], w["instance"]): w for w in report["workers"]}
    assert set(workers) == {
        ("risk", "h-1"),
        ("strategy-ma", "h-2"),
        ("strategy-ma", "h-3"),
        ("execution", "h-4"),
        ("portfolio", "h-5"),
    }
    risk = workers[("risk", "h-1")]
    assert (risk["state"], risk["alive"], risk["processed"], risk["seq"]) == (
        "running",
        True,
        42,
        2,
    )
    assert risk["metrics_port"] == 9101 and risk["age_s"] < 6
    assert workers[("strategy-ma", "h-2")]["alive"] and workers[("strategy-ma", "h-3")]["alive"]
    execution = workers[("execution", "h-4")]
    assert (execution["state"], execution["alive"], execution["status"]) == (
        "down",
        False,
        "running",
    )
    assert execution["age_s"] >= 60
    portfolio = workers[("portfolio", "h-5")]
    assert (portfolio["state"], portfolio["alive"], portfolio["processed"]) == (
        "stopped",
        False,
        99,
    )

    assert report["lag"] == [
        {
            "worker": "risk",
            "stream": "MARKET",
            "consumer": "risk-market",
            "pending": 3,
            "ack_pending": 1,
            "redelivered": 0,
        }
    ]

    system = report["system"]
    assert (system["status"], system["source"], system["rule"], system["reason"]) == (
        "HALTED",
        "kill-switch",
        "kill_switch",
        "fat finger",
    )
    assert system["kill_switch"]["active"] is True
    assert system["kill_switch"]["issued_by"] == "cli"

    equity = report["equity"]
    assert equity["equity"] == 100_500.5 and equity["fees"] == 3.25
    assert equity["gross_exposure"] == 50_500.5
    assert [(p["symbol"], p["qty"], p["avg_price"]) for p in report["positions"]] == [
        ("BTC/USDT", 1.5, 42_100.0)
    ]

    dead = report["dead_letters"]
    assert [d["reason"] for d in dead] == [f"bad payload {i}" for i in (14, 13, 12, 11, 10)]
    assert dead[0]["worker"] == "execution" and dead[0]["subject"] == "sig.x.14"
    rejections = report["rejections"]
    assert [r["client_order_id"] for r in rejections] == ["ma-2", "ma-1", "ma-0"]
    assert rejections[0]["rule"] == "max_position" and rejections[0]["reason"] == "position 8 > 5"


async def test_status_screen_shows_the_key_figures(nats_server: EmbeddedServer, bus: Bus) -> None:
    await populate(bus, nats_server.url)
    result = keel(nats_server.url, "status")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for needle in (
        "System status",
        "HALTED",
        "kill switch ON",
        "fat finger",
        "Workers: 3 alive of 5",
        "Consumer lag",
        "Portfolio: 1 open position",
        "100,500.50",
        "Latest errors: 10 dead letters, 3 risk rejections",
        "bad payload 14",
        "max_position: position 8 > 5",
    ):
        assert needle in out, (needle, out)
    worker_row, lag_row = rows(out, "risk")
    assert worker_row[1:3] == ["h-1", "running"] and worker_row[4:6] == ["42", "9101"]
    assert lag_row[1:6] == ["MARKET", "risk-market", "3", "1", "0"]
    assert table_row(out, "execution")[2] == "down"
    assert table_row(out, "portfolio")[2] == "stopped"
    assert table_row(out, "sim")[1:3] == ["BTC/USDT", "1.5"]
    assert "ETH/USDT" not in out  # closed


def rows(output: str, first_cell: str) -> list[list[str]]:
    """Every rich table row whose first cell is ``first_cell``."""
    found = []
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line)]
        cells = [c for c in cells if c]
        if cells and cells[0] == first_cell:
            found.append(cells)
    return found


def test_empty_log_is_a_clear_screen(nats_server: EmbeddedServer) -> None:
    screen = keel(nats_server.url, "status")
    assert screen.returncode == 0, screen.stdout + screen.stderr
    assert "nothing yet" in screen.stdout
    assert "UNKNOWN" in screen.stdout and "no heartbeats yet" in screen.stdout
    assert screen.stderr == ""

    report = status_json(nats_server.url)
    assert report["empty"] is True
    assert report["system"]["status"] == "UNKNOWN"
    assert report["system"]["kill_switch"] == {
        "active": False,
        "reason": "",
        "issued_by": "",
        "ts": None,
    }
    for key in ("workers", "lag", "positions", "dead_letters", "rejections"):
        assert report[key] == [], key
    assert report["equity"] is None


def test_unreachable_server_is_one_line() -> None:
    for args in (("status",), ("status", "--json")):
        result = keel("nats://127.0.0.1:1", *args, timeout=10)
        assert_one_error(result, "cannot reach NATS")
        assert result.stdout == ""


def test_bad_option_is_refused(nats_server: EmbeddedServer) -> None:
    result = keel(nats_server.url, "status", "--errors", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr


async def test_system_status_wins_over_an_older_kill(bus: Bus) -> None:
    now = time.time_ns()

    async def gov(action: str, at: int) -> None:
        await put(bus, GovernanceCommand(ts=at, action=action, reason=action, issued_by="t"), at)

    async def status(state: str, at: int, source: str = "risk", rule: str = "") -> None:
        event = SystemStatus(ts=at, status=state, reason=f"{state} now", source=source, rule=rule)
        await put(bus, event, "st", source, at)

    report = await collect(bus, now_ns=now)
    assert (report.system.status, report.empty) == ("UNKNOWN", True)

    await status("DEGRADED", now, rule="venue_breaker")
    await status("RUNNING", now, source="depeg-guard")
    report = await collect(bus, now_ns=now)
    assert (report.system.status, report.system.source, report.system.rule) == (
        "DEGRADED",
        "risk",
        "venue_breaker",
    )
    assert [s.source for s in report.system.sources] == ["depeg-guard", "risk"]

    # a kill after every status: halted by the kill switch, the sources still listed
    await gov("kill", now + 1)
    report = await collect(bus, now_ns=now)
    assert (report.system.status, report.system.source) == ("HALTED", "kill-switch")
    assert [s.source for s in report.system.sources] == ["depeg-guard", "risk", "kill-switch"]

    # risk answered the kill: its own status stands, no derived row
    await status("SAFE_MODE", now + 2, rule="kill_switch")
    report = await collect(bus, now_ns=now)
    assert (report.system.status, report.system.source) == ("SAFE_MODE", "risk")
    assert report.system.kill_switch.active
    assert "kill-switch" not in [s.source for s in report.system.sources]

    # resumed and running again
    await gov("resume", now + 3)
    await status("RUNNING", now + 4)
    report = await collect(bus, now_ns=now)
    assert (report.system.status, report.system.kill_switch.active) == ("RUNNING", False)
    assert report.system.kill_switch.reason == "resume"

    # a kill with no status after it halts again; a second kill keeps it halted
    await gov("kill", now + 5)
    await gov("kill", now + 6)
    report = await collect(bus, now_ns=now)
    assert (report.system.status, report.system.kill_switch.active) == ("HALTED", True)


async def test_tail_reads_only_the_last_matches(bus: Bus) -> None:
    now = time.time_ns()
    assert await tail(bus, "SYSTEM", "sys.dlq.>", 5) == []
    for i in range(37):
        worker = ("risk", "execution", "portfolio")[i % 3]
        letter = DeadLetter(ts=now + i, worker=worker, subject="x", reason=str(i), payload=b"")
        await put(bus, letter, "dlq", i)
        await put(bus, beat(now + i, worker, "h", i, i), "hb", i)  # interleaved noise
    got = await tail(bus, "SYSTEM", "sys.dlq.>", 5)
    assert [s.event.reason for s in got] == ["32", "33", "34", "35", "36"]
    only_risk = await tail(bus, "SYSTEM", "sys.dlq.risk", 4)
    assert [s.event.reason for s in only_risk] == ["27", "30", "33", "36"]
    everything = await tail(bus, "SYSTEM", "sys.dlq.>", 100)
    assert [s.event.reason for s in everything] == [str(i) for i in range(37)]
    assert await tail(bus, "SYSTEM", "sys.nothing.>", 3) == []
    # the probes and reads leave no consumers behind: the probes expire by themselves
    deadline = time.monotonic() + 15
    while await bus.js.consumers_info("SYSTEM"):
        assert time.monotonic() < deadline, await bus.js.consumers_info("SYSTEM")
        await asyncio.sleep(0.2)


def test_status_after_a_demo_shows_its_workers_stopped(tmp_path: Path) -> None:
    """The demo's kept store, read by ``keel status`` in the same directory (its own embedded
    server on ``.keel``): the consuming workers said ``stopped`` when the demo ended, their
    consumers have nothing pending, and the portfolio is there."""
    env = {k: v for k, v in os.environ.items() if k != URL_ENV}
    env["COLUMNS"] = "200"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.app", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=90,
        )

    demo = run("demo", "--bars", "60", "--keep", ".keel")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    final_equity = table_row(demo.stdout, "final equity")[1]

    result = run("status", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    workers = {w["worker"]: w for w in report["workers"]}
    consumers = {"portfolio", "execution", "risk", "strategy-ma_cross"}
    assert set(workers) == consumers | {"marketdata"}  # the feed beats too, but consumes nothing
    assert all(w["state"] == "stopped" and not w["alive"] for w in workers.values())
    assert all(w["processed"] > 0 for w in workers.values())
    assert {lag["worker"] for lag in report["lag"]} == consumers
    assert all(lag["pending"] == lag["ack_pending"] == 0 for lag in report["lag"])
    assert f"{report['equity']['equity']:,.2f}" == final_equity
    assert report["system"]["status"] == "UNKNOWN"
    assert not (tmp_path / ".keel" / "server.json").exists()  # its server stopped again


async def test_watch_refreshes_until_ctrl_c(nats_server: EmbeddedServer, bus: Bus) -> None:
    env = {**os.environ, URL_ENV: nats_server.url, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "cli.app", "status", "--watch", "0.2"]
    for as_json in (True, False):
        proc = subprocess.Popen(
            cmd + (["--json"] if as_json else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            if as_json:
                assert json.loads(first)["empty"] is True
                await put(bus, beat(time.time_ns(), "risk", "h-1", 1, 3), "hb")
                deadline = time.monotonic() + 10
                while True:  # a later refresh sees the new worker
                    report = json.loads(proc.stdout.readline())
                    if report["workers"]:
                        break
                    assert time.monotonic() < deadline
                assert report["workers"][0]["worker"] == "risk"
            else:
                assert "Keel status" in first
                await asyncio.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=15)  # a few screens at most: the pipe cannot fill
            out, err = proc.stdout.read(), proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
        if not as_json:
            assert "Workers" in out
