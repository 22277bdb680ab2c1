"""The real ``keel`` command line against a real nats-server: output, exit codes, one-line errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError

from eventstore.bus import Bus
from eventstore.server import URL_ENV, EmbeddedServer, port_open
from eventstore.streams import STREAMS
from tests.conftest import ROOT, keel

BARS = 50
START = datetime(2024, 1, 1, tzinfo=UTC)


def binance_csv(path: Path, rows: int = BARS) -> Path:
    """A Binance-style kline CSV with a header and ISO open times, one bar a minute."""
    lines = ["open_time,open,high,low,close,volume"]
    for i in range(rows):
        at = (START + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        price = 42_000 + 10 * i
        lines.append(f"{at},{price},{price + 25},{price - 15},{price + 5},{1.5 + i / 10}")
    path.write_text("\n".join(lines) + "\n")
    return path


def table_row(output: str, first_cell: str) -> list[str]:
    """The cells of the rich table row whose first cell is ``first_cell``."""
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line)]
        cells = [c for c in cells if c]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row {first_cell!r} in:\n{output}")


def assert_one_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Non-zero exit, no traceback, and stderr is exactly one ``error:`` line naming the needles."""
    both = result.stdout + result.stderr
    assert result.returncode != 0, both
    assert "Traceback" not in both, both
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def ingest(url: str, path: Path) -> subprocess.CompletedProcess[str]:
    return keel(url, "ingest", str(path), "--venue", "binance", "--symbol", "BTC/USDT")


async def market_count(bus: Bus) -> int:
    return (await bus.js.stream_info("MARKET")).state.messages


# 1. ingest is idempotent


async def test_ingest_stores_once(nats_server: EmbeddedServer, bus: Bus, tmp_path: Path) -> None:
    path = binance_csv(tmp_path / "btc.csv")

    first = ingest(nats_server.url, path)
    assert first.returncode == 0, first.stderr
    row = table_row(first.stdout, "btc.csv")
    assert row[1:] == ["BTC/USDT", "1m", "50", "50", "0", "0"]

    again = ingest(nats_server.url, path)
    assert again.returncode == 0, again.stderr
    row = table_row(again.stdout, "btc.csv")
    assert (row[4], row[5]) == ("0", "50")  # stored, already stored

    assert await market_count(bus) == BARS


# 2. ingest refuses bad input with one line


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    garbled = tmp_path / "garbled.csv"
    garbled.write_bytes(bytes(range(256)) * 4)
    no_close = tmp_path / "no_close.csv"
    no_close.write_text(
        "open_time,open,high,low,volume\n"
        "2024-01-01T00:00:00Z,1,2,0.5,3\n"
        "2024-01-01T00:01:00Z,1,2,0.5,3\n"
    )
    return {
        "missing": tmp_path / "missing.csv",
        "empty": empty,
        "garbled": garbled,
        "no_close": no_close,
    }


@pytest.mark.parametrize("kind", ["missing", "empty", "garbled", "no_close"])
def test_ingest_bad_file_is_one_error_line(
    nats_server: EmbeddedServer, tmp_path: Path, kind: str
) -> None:
    path = _bad_files(tmp_path)[kind]
    line = assert_one_error(ingest(nats_server.url, path), path.name)
    if kind == "no_close":
        assert "close" in line


async def test_bad_file_among_good_ones_stores_nothing(
    nats_server: EmbeddedServer, bus: Bus, tmp_path: Path
) -> None:
    good = binance_csv(tmp_path / "good.csv")
    other = binance_csv(tmp_path / "other.csv")
    bad = _bad_files(tmp_path)["no_close"]
    result = keel(nats_server.url, "ingest", str(good), str(other), str(bad), "--venue", "binance")
    assert_one_error(result, bad.name)
    assert await market_count(bus) == 0


# 3. tap


async def test_tap_history(nats_server: EmbeddedServer, bus: Bus, tmp_path: Path) -> None:
    url = nats_server.url
    assert ingest(url, binance_csv(tmp_path / "btc.csv")).returncode == 0

    everything = keel(url, "tap", "md.>", "--no-follow", "--json")
    assert everything.returncode == 0, everything.stderr
    records = json_lines(everything.stdout)
    assert len(records) == BARS
    for record in records:
        assert {"subject", "seq", "id"} <= record.keys()
        assert record["subject"].startswith("md.bar.binance.")
        assert record["event"]["type"] == "Bar"

    last_seq = (await bus.js.stream_info("MARKET")).state.last_seq
    tail = keel(url, "tap", "md.>", "--no-follow", "--json", "--last", "5")
    assert tail.returncode == 0, tail.stderr
    assert [r["seq"] for r in json_lines(tail.stdout)] == list(range(last_seq - 4, last_seq + 1))

    future = (datetime.now(UTC) + timedelta(days=365)).isoformat()
    later = keel(url, "tap", "md.>", "--no-follow", "--json", "--since", future)
    assert later.returncode == 0, later.stderr
    assert later.stdout.strip() == ""

    human = keel(url, "tap", "md.>", "--no-follow", "--last", "3")
    assert human.returncode == 0, human.stderr
    lines = [line for line in human.stdout.splitlines() if line.strip()]
    assert len(lines) == 3
    assert all("Bar BTC/USDT" in line for line in lines), human.stdout


def test_tap_bad_pattern_and_time(nats_server: EmbeddedServer) -> None:
    assert_one_error(keel(nats_server.url, "tap", "foo.>", "--no-follow"), "foo.>")
    assert_one_error(
        keel(nats_server.url, "tap", "md.>", "--no-follow", "--since", "yesterday"), "yesterday"
    )


# 4. kill switch, 5. streams


async def test_kill_and_resume_are_logged(nats_server: EmbeddedServer, bus: Bus) -> None:
    url = nats_server.url
    killed = keel(url, "kill", "--reason", "test")
    assert killed.returncode == 0, killed.stderr
    resumed = keel(url, "resume")
    assert resumed.returncode == 0, resumed.stderr

    assert (await bus.js.stream_info("GOVERNANCE")).state.messages == 2
    tapped = keel(url, "tap", "gov.>", "--no-follow", "--json")
    assert tapped.returncode == 0, tapped.stderr
    events = [r["event"] for r in json_lines(tapped.stdout)]
    assert [e["action"] for e in events] == ["kill", "resume"]
    assert events[0]["reason"] == "test"
    assert events[1]["reason"]


def test_streams_lists_every_stream(nats_server: EmbeddedServer) -> None:
    result = keel(nats_server.url, "streams")
    assert result.returncode == 0, result.stderr
    names = {spec.name for spec in STREAMS}
    assert names == {
        "MARKET",
        "SIGNALS",
        "ORDERS",
        "EXECUTION",
        "PORTFOLIO",
        "GOVERNANCE",
        "EXTERNAL",
        "VENUE",
        "SYSTEM",
    }
    for name in names:
        assert table_row(result.stdout, name)


# 6. user mistakes: one clear line, no traceback


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["run", "strategy", "--name", "nope"], ["nope", "ma_cross"]),
        (["run", "strategy", "--name", "ma_cross", "--param", "fast=x"], ["fast"]),
        (
            ["run", "strategy", "--name", "ma_cross", "--param", "fast=50", "--param", "slow=10"],
            ["fast", "slow"],
        ),
        (["run", "strategy", "--name", "ma_cross", "--param", "oops"], ["oops", "key=value"]),
        (["run", "strategy", "--name", "ma_cross", "--instance", "a.b"], ["a.b"]),
    ],
    ids=["unknown-strategy", "param-type", "fast-above-slow", "param-not-key-value", "instance"],
)
def test_strategy_mistakes(
    nats_server: EmbeddedServer, args: list[str], needles: list[str]
) -> None:
    assert_one_error(keel(nats_server.url, *args, timeout=20), *needles)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ('[risk]\nmax_position = "lots"\n', ["$.risk.max_position"]),
        ("[risk]\nfoo = 1\n", ["foo", "$.risk"]),
        ("this is [not toml\n", ["not valid TOML"]),
        (None, ["no such file"]),
    ],
    ids=["bad-type", "unknown-key", "not-toml", "missing"],
)
def test_config_mistakes(
    nats_server: EmbeddedServer, tmp_path: Path, text: str | None, needles: list[str]
) -> None:
    path = tmp_path / "bad.toml"
    if text is not None:
        path.write_text(text)
    result = keel(nats_server.url, "run", "risk", "--config", str(path), timeout=20)
    assert_one_error(result, "bad.toml", *needles)


def test_unreachable_nats_is_one_line() -> None:
    env = {**os.environ, URL_ENV: "nats://127.0.0.1:1"}
    result = subprocess.run(
        [sys.executable, "-m", "cli.app", "streams"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,  # a bound on a hang, not a speed test: a loaded machine imports slowly
    )
    assert_one_error(result, "cannot reach NATS")


# 7. demo, 8. the embedded default server


def _without_url() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != URL_ENV}
    return {**env, "COLUMNS": "200"}


def _demo(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.app", "demo", "--bars", "150"],
        capture_output=True,
        text=True,
        env=_without_url(),
        cwd=cwd,
        timeout=90,
    )


def test_demo_trades_and_is_reproducible(tmp_path: Path) -> None:
    first, second = _demo(tmp_path), _demo(tmp_path)
    for result in (first, second):
        assert result.returncode == 0, result.stdout + result.stderr
        assert "final equity" in result.stdout
    fills = int(table_row(first.stdout, "fills")[1].replace(",", ""))
    assert fills > 0, first.stdout
    for row in ("bars", "signals", "orders", "fills", "final equity", "fees"):
        assert table_row(first.stdout, row) == table_row(second.stdout, row), row


def test_embedded_server_started_and_stopped(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.app", "streams"],
        capture_output=True,
        text=True,
        env=_without_url(),
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert table_row(result.stdout, "MARKET")

    store = tmp_path / ".keel"
    assert (store / "jetstream").is_dir()
    assert not (store / "server.json").exists()
    log = (store / "nats-server.log").read_text()
    listening = re.search(r"\[(\d+)\].*Listening for client connections on [\d.]+:(\d+)", log)
    assert listening, log
    pid, port = int(listening.group(1)), int(listening.group(2))
    assert not port_open("127.0.0.1", port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_tap_without_a_fleet_starts_nothing(tmp_path: Path) -> None:
    """A tap attaches to a running fleet only (issue 13, defect 8): in a directory with no
    fleet and no ``KEEL_NATS_URL`` it says so in one line, exits non-zero, creates nothing."""
    result = subprocess.run(
        [sys.executable, "-m", "cli.app", "tap", "md.>"],
        capture_output=True,
        text=True,
        env=_without_url(),
        cwd=tmp_path,
        timeout=60,
    )
    assert_one_error(result, "no running fleet", URL_ENV)
    assert not (tmp_path / ".keel").exists()


async def consumed(url: str, stream: str, timeout: float) -> bool:
    """Whether ``stream`` gets a consumer within ``timeout`` seconds."""
    bus = await Bus.connect(url, name="test-probe", ensure=False)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(NotFoundError):
                if (await bus.js.stream_info(stream)).state.consumer_count:
                    return True
            await asyncio.sleep(0.05)
        return False
    finally:
        await bus.close()


def test_sigterm_stops_the_embedded_server(tmp_path: Path) -> None:
    """A ``keel up`` stopped by SIGTERM still stops the server it started (and its workers).

    ``keel up`` is the command that legitimately starts a server: a tap only attaches."""
    up = subprocess.Popen(
        [sys.executable, "-m", "cli.app", "up", "--pace-ms", "50", "--bars", "200"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_without_url(),
        cwd=tmp_path,
    )
    record = tmp_path / ".keel" / "server.json"
    try:
        deadline = time.monotonic() + 20
        while not record.exists() and up.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert record.exists(), "keel up did not start an embedded server"
        url = json.loads(record.read_text())["url"]
        port = int(url.rsplit(":", 1)[1])
        assert asyncio.run(consumed(url, "MARKET", timeout=60)), "no worker subscribed"
        up.send_signal(signal.SIGTERM)
        _, stderr = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert up.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert not record.exists()
    assert not port_open("127.0.0.1", port)
