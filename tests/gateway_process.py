"""A venue gateway as a real process on an exchange fake's clock, for crash tests.

``write_config`` writes a fleet config whose one venue is the fake, traded by a gateway
with the test's ``[venues.gateway]`` timings; ``start_gateway`` runs ``keel run gateway
--venue NAME --config FILE`` on the fake's ``ScaledClock`` (``KEEL_TEST_CLOCK``, read by
``tests/fakes/site/sitecustomize.py``) the way ``tests/up_process.py`` starts ``keel up``;
``kill`` ends a process with SIGKILL (nothing of it runs after that).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import msgspec

from services.config import load_config
from services.venues.gateway.config import GatewayConfig
from tests.fakes.clock import ScaledClock
from tests.fakes.core import FakeExchange
from tests.up_process import fake_time_env

KEY_ENV, SECRET_ENV = "KEEL_TEST_KEY", "KEEL_TEST_SECRET"
NO_TESTNET = frozenset({"kraken"})
"""Exchanges ccxt knows no testnet of: their entry is in mode live (``live = true``)."""


def write_config(path: Path, fake: FakeExchange, venue: str, gateway: GatewayConfig) -> Path:
    """A fleet config (JSON, as ``load_config`` reads it) whose one venue is ``fake``,
    traded by a gateway with ``gateway``'s timings, its credentials in
    ``KEY_ENV``/``SECRET_ENV``."""
    mode: dict[str, Any] = (
        {"mode": "live", "live": True}
        if fake.exchange_id in NO_TESTNET
        else {"mode": "sandbox", "sandbox": True}
    )
    entry = {
        **fake.venue_entry(venue),
        **mode,
        "timeout_ms": 1500,
        "credentials": {"api_key_env": KEY_ENV, "secret_env": SECRET_ENV},
        "gateway": msgspec.to_builtins(gateway),
    }
    path.write_bytes(msgspec.json.encode({"venues": [entry]}))
    return path


async def start_keel(
    args: list[str], cwd: Path, url: str, clock: ScaledClock, log: Path, **env: str
) -> asyncio.subprocess.Process:
    """``python -m ARGS...`` on ``url`` and the fake's clock, its output appended to ``log``."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", *args, cwd=cwd, env={**fake_time_env(url, clock), **env},
            stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip


async def start_gateway(
    cwd: Path,
    url: str,
    clock: ScaledClock,
    config: Path,
    venue: str,
    secrets: tuple[str, str],
    log: Path,
) -> asyncio.subprocess.Process:
    """``keel run gateway`` for ``venue``, its credentials in its environment only (a venue
    in mode live gets ``--live``)."""
    args = ["cli.app", "run", "gateway", "--venue", venue, "--config", str(config)]
    live = load_config(config).venue(venue)
    if live is not None and live.mode == "live":
        args.append("--live")
    secret_env = {KEY_ENV: secrets[0], SECRET_ENV: secrets[1]}
    return await start_keel(args, cwd, url, clock, log, **secret_env)


async def kill(process: asyncio.subprocess.Process) -> int:
    """SIGKILL: the process ends wherever it is, nothing of it runs after this."""
    if process.returncode is None:
        os.kill(process.pid, signal.SIGKILL)
    return await process.wait()
