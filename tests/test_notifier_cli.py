"""``keel run notifier``: off without ``[notifier]``, one line for a missing URL (never a
value), and the configuration docs/alerts.md shows loads as written."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
import tomllib
from pathlib import Path

import msgspec

from contracts.envelope import Envelope, content_id
from contracts.system_events import SystemStatus
from eventstore.bus import Bus
from eventstore.server import URL_ENV, EmbeddedServer
from services.config import KeelConfig
from tests.conftest import ROOT, keel
from tests.fakes.notify_sink import NotifySink

NO_SERVER = "nats://127.0.0.1:1"


def test_without_a_notifier_section_it_stops_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "keel.toml"
    path.write_text("")
    result = keel(NO_SERVER, "run", "notifier", "--config", str(path))
    assert result.returncode != 0
    assert "the config has no [notifier] section" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_a_missing_url_variable_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "keel.toml"
    path.write_text('[[notifier.destinations]]\nname = "ops"\nurl_env = "KEEL_TEST_UNSET_URL"\n')
    result = keel(NO_SERVER, "run", "notifier", "--config", str(path))
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in out
    assert "notifier destination ops: $KEEL_TEST_UNSET_URL is not set" in out


def test_the_documented_configuration_loads() -> None:
    text = (ROOT / "docs/alerts.md").read_text()
    section = text[text.index("## Notifier") :]
    example = re.search(r"```toml\n(.*?)```", section, re.S)
    assert example is not None
    config = msgspec.convert(tomllib.loads(example[1]), KeelConfig).notifier
    assert config is not None and [d.name for d in config.destinations] == ["ops"]
    limits = config.destinations[0].limits
    assert (limits.per_second, limits.per_minute, limits.queue) == (1, 20, 200)


async def test_keel_run_notifier_delivers_and_stops_on_sigterm(
    tmp_path: Path, nats_server: EmbeddedServer, bus: Bus
) -> None:
    sink = await NotifySink().start()
    secret = "wEbHoOkSeCrEt-SHOULD-NEVER-SHOW"
    path = tmp_path / "keel.toml"
    path.write_text(
        '[notifier]\ndead_after_s = 60\n[[notifier.destinations]]\nname = "hook"\n'
        'url_env = "KEEL_TEST_HOOK_URL"\n'
    )
    env = {
        **os.environ,
        URL_ENV: nats_server.url,
        "KEEL_TEST_HOOK_URL": f"json://127.0.0.1:{sink.port}/{secret}",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.app", "run", "notifier", "--config", str(path),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while await bus.last_event("SYSTEM", "sys.heartbeat.notifier") is None:
            assert time.monotonic() < deadline, "the notifier did not start"
            await asyncio.sleep(0.1)
        halt = SystemStatus(ts=time.time_ns(), status="HALTED", reason="drill", source="risk")
        await bus.publish(halt, Envelope.root(content_id("cli-halt"), halt.ts), "test")
        while not sink.received:
            assert time.monotonic() < deadline, "nothing delivered"
            await asyncio.sleep(0.1)
        assert sink.received[0].title == "risk: HALTED" and sink.received[0].type == "failure"
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(proc.communicate(), 20)
        await sink.stop()
    assert proc.returncode == 0, output.decode()
    assert secret not in output.decode() and "notifier: 1 destinations (hook)" in output.decode()
