"""The scaled exchange clock and its hand-over to a subprocess (``KEEL_TEST_CLOCK``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes.clock import ScaledClock

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "tests" / "fakes" / "site"


def test_now_runs_at_rate_from_start() -> None:
    wall0 = time.time_ns()
    clock = ScaledClock(1_700_000_000 * 10**9, 60, wall0)
    now = clock.now_ns()
    elapsed = time.time_ns() - wall0
    assert 1_700_000_000 * 10**9 <= now <= 1_700_000_000 * 10**9 + elapsed * 60
    assert clock.wall_seconds(60) == 1.0


def test_sleep_takes_scaled_wall_time() -> None:
    clock = ScaledClock(0, 600)
    before = clock.now_ns()
    wall = time.monotonic()
    asyncio.run(clock.sleep(60))
    assert clock.now_ns() - before >= 60 * 10**9
    assert time.monotonic() - wall < 5  # 60 exchange seconds are 0.1 wall seconds


def test_env_round_trip_and_bad_text() -> None:
    clock = ScaledClock(123_000, 3600.0, 456_000)
    again = ScaledClock.from_env(clock.to_env())
    assert (again.start_ns, again.wall0_ns, again.rate) == (123_000, 456_000, 3600.0)
    with pytest.raises(ValueError, match="KEEL_TEST_CLOCK"):
        ScaledClock.from_env("not a clock")
    with pytest.raises(ValueError, match="rate"):
        ScaledClock(0, 0)


def test_subprocess_reads_the_scaled_clock() -> None:
    start = 1_600_000_000 * 10**9
    clock = ScaledClock(start, 3600)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SITE), str(ROOT), env.get("PYTHONPATH", "")])
    env["KEEL_TEST_CLOCK"] = clock.to_env()
    code = "from services.runtime import clock; print(clock.system_clock().now_ns())"
    before = clock.now_ns()
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    after = clock.now_ns()
    seen = int(out.stdout.strip())
    assert before <= seen <= after
    assert abs(seen - time.time_ns()) > 10**15  # exchange time, days away from the wall
    env.pop("KEEL_TEST_CLOCK")
    plain = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert abs(int(plain.stdout) - time.time_ns()) < 60 * 10**9
