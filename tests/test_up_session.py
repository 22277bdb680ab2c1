"""``keel up`` with the embedded server, and a ``keel tap`` next to it that sees fills flow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from eventstore.server import URL_ENV


def test_tap_beside_up_shows_fills_flowing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != URL_ENV}
    up = subprocess.Popen(
        [sys.executable, "-m", "cli.app", "up", "--pace-ms", "10", "--bars", "3000"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        fills: list[dict] = []
        deadline = time.monotonic() + 90
        while not fills and time.monotonic() < deadline and up.poll() is None:
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
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output
    assert "fleet up on nats://127.0.0.1:" in output
    assert not (tmp_path / ".keel" / "server.json").exists(), "embedded server left running"
