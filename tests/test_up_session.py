"""``keel up`` with the embedded server: a tap beside it sees fills flow, and it supervises its
fleet (issue 13, defects 5 and 7): a killed worker or nats-server comes back and the fleet
goes on, a worker that fails on every start is a give-up in one line, and a second
``keel up`` in the same directory is refused."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest

from cli.fleet_commands import report_status
from eventstore.bus import Bus
from eventstore.errors import KeelError
from eventstore.server import URL_ENV, EmbeddedServer, port_open
from services.fleet import fleet_lock
from services.runtime.snapshots import Snapshot, snapshot_bucket

STATUS = re.compile(r"^bars ([\d,]+)\s+signals [\d,]+\s+orders [\d,]+\s+fills ([\d,]+)")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != URL_ENV}
    env["COLUMNS"] = "400"
    return env


class Session:
    """A ``keel up`` in ``cwd`` whose output lines are collected as they come."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.cwd = cwd
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.app", "up", *args],
            cwd=cwd,
            env=env or _env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 60, after: int = 0) -> int:
        """The index of the first line from ``after`` on that matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in range(after, len(self.lines)):
                if re.search(pattern, self.lines[i]):
                    return i
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} in:\n{self.output}")

    def count_after(self, index: int, above: int, column: int = 2, timeout: float = 60) -> int:
        """Wait for a status line after ``index`` whose fills (column 2; bars: 1) exceed
        ``above``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[index + 1 :]:
                m = STATUS.match(line)
                if m and int(m[column].replace(",", "")) > above:
                    return int(m[column].replace(",", ""))
            time.sleep(0.2)
        raise AssertionError(f"column {column} stayed at or below {above}:\n{self.output}")

    def last_count(self, column: int = 2) -> int:
        found = [STATUS.match(line) for line in self.lines]
        return max([int(m[column].replace(",", "")) for m in found if m] or [0])

    def children(self) -> dict[str, int]:
        """The processes ``keel up`` started, by what they run: ``risk``, ``nats-server``..."""
        out: dict[str, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
            except (OSError, IndexError):
                continue
            if int(fields[1]) != self.proc.pid:
                continue
            args = [a.decode() for a in cmdline if a]
            if "run" in args:
                out[args[args.index("run") + 1]] = int(stat.parent.name)
            elif args and args[0].endswith("nats-server"):
                out["nats-server"] = int(stat.parent.name)
        return out

    def left_running(self) -> list[int]:
        """Processes still running in the session's directory (what ``keel up`` started)."""
        pids = []
        for cwd in Path("/proc").glob("[0-9]*/cwd"):
            try:
                if cwd.resolve() == self.cwd.resolve() and int(cwd.parent.name) != os.getpid():
                    pids.append(int(cwd.parent.name))
            except OSError:
                continue
        return pids

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        return self.proc.returncode


def test_tap_beside_up_shows_fills_flowing(tmp_path: Path) -> None:
    env = _env()
    up = Session(tmp_path, "--pace-ms", "10", "--bars", "3000")
    try:
        fills: list[dict] = []
        deadline = time.monotonic() + 90
        while not fills and time.monotonic() < deadline and up.proc.poll() is None:
            time.sleep(1)
            if not (tmp_path / ".keel" / "server.json").exists():
                continue
            tap = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cli.app",
                    "tap",
                    "exec.>",
                    "--last",
                    "50",
                    "--no-follow",
                    "--json",
                ],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert tap.returncode == 0, tap.stderr
            records = [json.loads(line) for line in tap.stdout.splitlines() if line]
            fills = [r for r in records if r["event"]["status"] == "filled"]
        assert fills, "no fills seen by a tap beside keel up"
        assert all(r["subject"].startswith("exec.report.sim.") for r in fills)
        assert all(r["event"]["fill_price"] > 0 for r in fills)
    finally:
        code = up.stop()
    assert code == 0, up.output
    assert "fleet up on nats://127.0.0.1:" in up.output
    assert not (tmp_path / ".keel" / "server.json").exists(), "embedded server left running"


def test_up_restarts_a_killed_worker_and_server_and_refuses_a_second_fleet(
    tmp_path: Path,
) -> None:
    """kill -9 of risk, of the market-data feed, then of the embedded nats-server: each comes
    back (the server on its store and port) and bars and fills keep flowing. A second ``keel up`` here exits 2 (the
    directory's lock), and so does one elsewhere on the same server (live heartbeats)."""
    up = Session(tmp_path, "--pace-ms", "10", "--bars", "20000", "--backoff", "0.1")
    record = tmp_path / ".keel" / "server.json"
    try:
        up.wait_for(r"^fleet up on ")
        first = up.count_after(0, 0)

        os.kill(up.children()["risk"], signal.SIGKILL)
        crashed = up.wait_for(r"^worker risk crashed \(signal SIGKILL\): restarting in")
        up.count_after(crashed, max(first, up.last_count()))

        os.kill(up.children()["marketdata"], signal.SIGKILL)
        crashed = up.wait_for(r"^worker marketdata crashed \(signal SIGKILL\): restarting in")
        up.count_after(crashed, up.last_count(column=1), column=1)

        before = msgspec.json.decode(record.read_bytes())
        os.kill(up.children()["nats-server"], signal.SIGKILL)
        down = up.wait_for(r"^nats-server crashed \(signal SIGKILL\): restarting in")
        back = up.wait_for(r"^nats-server restarted on ", after=down)
        assert before["url"] in up.lines[back], up.lines[back]
        after = msgspec.json.decode(record.read_bytes())
        assert after["url"] == before["url"] and after["store_dir"] == before["store_dir"]
        assert after["pid"] == up.children()["nats-server"] != before["pid"]
        up.count_after(back, up.last_count())

        second = subprocess.run(
            [sys.executable, "-m", "cli.app", "up", "--bars", "10"],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second.stdout + second.stderr
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: a fleet already runs"), lines
        assert f"pid {up.proc.pid}" in lines[0]

        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        beside = subprocess.run(
            [sys.executable, "-m", "cli.app", "up", "--bars", "10"],
            cwd=elsewhere,
            env={**_env(), URL_ENV: after["url"]},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert beside.returncode == 2, beside.stdout + beside.stderr
        lines = [line for line in beside.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"error: a fleet already consumes on {after['url']}: worker ")
        assert not (elsewhere / ".keel" / "logs").exists(), "the refused fleet started workers"
        assert "Traceback" not in up.output
        assert up.proc.poll() is None, "the first fleet stopped"
        assert up.children()["risk"] in up.left_running()
    finally:
        code = up.stop()
    assert code == 0, up.output
    assert not record.exists()
    assert not up.left_running(), "workers or server left running"


def test_a_worker_failing_on_every_start_is_a_give_up_in_one_line(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    """risk's stored snapshot is from another build: every start of risk stops at once with
    one line (exit 2). ``keel up`` restarts it, gives up, names it, and exits non-zero."""

    async def plant() -> None:
        bus = await Bus.connect(nats_server.url, name="test-plant")
        try:
            kv = await snapshot_bucket(bus)
            await kv.put("risk", msgspec.msgpack.encode(Snapshot(999, {}, b"")))
        finally:
            await bus.close()

    asyncio.run(plant())
    env = {**_env(), URL_ENV: nats_server.url}
    up = Session(
        tmp_path,
        *("--pace-ms", "10", "--bars", "50", "--max-crashes", "3"),
        *("--backoff", "0.1", "--backoff-max", "0.2"),
        env=env,
    )
    try:
        up.wait_for(r"^worker risk crashed \(exit code 2\): restarting in .* \(crash 1 of 3")
        up.proc.wait(timeout=90)
    finally:
        code = up.stop()
    assert code == 1, up.output
    errors = [line for line in up.lines if line.startswith("error:")]
    assert len(errors) == 1, up.output
    assert errors[0].startswith("error: worker risk gave up after 3 crashes within 300s")
    assert "last exit code 2; last lines of .keel/logs/risk.log:" in errors[0]
    assert "is at version 999" in errors[0]  # risk's own line, from its log
    assert "nats-server restarted" not in up.output
    assert "Traceback" not in up.output
    assert not up.left_running(), "workers left running"
    assert port_open("127.0.0.1", nats_server.port), "a server keel up did not start was stopped"


async def test_the_status_line_says_so_when_the_log_cannot_be_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server gone under ``keel up``'s status loop: one line, no traceback, and the
    loop carries on (it ends only when told to stop)."""
    server = EmbeddedServer(tmp_path / "nats").start()
    bus = await Bus.connect(server.url, name="test-status")
    try:
        server.stop()
        stop = asyncio.Event()
        loop = asyncio.create_task(report_status(bus, stop))
        said = ""
        deadline = time.monotonic() + 60
        while "log unreadable" not in said and time.monotonic() < deadline:
            assert not loop.done(), loop
            await asyncio.sleep(0.2)
            said += capsys.readouterr().out
        stop.set()
        await asyncio.wait_for(loop, 30)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bus.close(), 2)
    lines = [line for line in said.splitlines() if "log unreadable" in line]
    assert lines and "still supervising" in lines[0], said
    assert "Traceback" not in said


def test_an_embedded_server_that_cannot_come_back_is_a_give_up(tmp_path: Path) -> None:
    """kill -9 of the embedded server, and its port taken before the restart: every start
    fails, and ``keel up`` gives up in one line naming the server and its log."""
    up = Session(
        tmp_path,
        *("--pace-ms", "10", "--bars", "20000", "--max-crashes", "2"),
        *("--backoff", "1", "--backoff-max", "1"),
    )
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT, as Go does
    try:
        up.wait_for(r"^fleet up on ")
        url = msgspec.json.decode((tmp_path / ".keel" / "server.json").read_bytes())["url"]
        os.kill(up.children()["nats-server"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:  # the killed server's port frees at once; take it before the restart
            try:
                squatter.bind(("127.0.0.1", int(url.rsplit(":", 1)[1])))
                break
            except OSError:
                assert time.monotonic() < deadline, "the killed server's port stayed in use"
                time.sleep(0.02)
        squatter.listen()
        up.proc.wait(timeout=90)
    finally:
        code = up.stop()
        squatter.close()
    assert code == 1, up.output
    assert re.search(
        r"^nats-server did not come back: nats-server exited at start", up.output, re.M
    )
    errors = [line for line in up.lines if line.startswith("error:")]
    assert len(errors) == 1, up.output
    assert errors[0].startswith("error: nats-server (embedded, port ")
    assert "gave up after 2 crashes within 300s" in errors[0]
    assert "last lines of .keel/nats-server.log:" in errors[0]
    assert "nats-server restarted" not in up.output
    assert "Traceback" not in up.output
    assert not up.left_running(), "workers left running"


def test_the_fleet_lock_refuses_a_second_holder_and_dies_with_its_holder(tmp_path: Path) -> None:
    """The lock of ``keel up`` (``flock``): a second holder gets one line naming the first's
    pid; once the first is killed with SIGKILL the lock is free, with no stale file to clear."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from services.fleet import fleet_lock\n"
            "with fleet_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)",
            str(tmp_path / ".keel"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(KeelError, match=rf"pid {holder.pid}\)"), fleet_lock(tmp_path / ".keel"):
            pass
    finally:
        holder.kill()
        holder.wait()
    with fleet_lock(tmp_path / ".keel"):
        assert (tmp_path / ".keel" / "fleet.lock").read_text().strip() == str(os.getpid())
