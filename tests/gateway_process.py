"""A venue gateway as a real process on an exchange fake's clock, for crash tests.

``python -m tests.gateway_process --config FILE --venue NAME --gateway JSON`` runs what
``keel run gateway --venue NAME --config FILE`` runs (``cli/gateway_commands.py``): the
``Gateway`` worker of that ``[[venues]]`` entry on the system clock, which
``tests/fakes/site/sitecustomize.py`` turns into the fake's ``ScaledClock``. The only
difference is where the ``[venues.gateway]`` timings come from: ``--gateway`` (a
``GatewayConfig`` as JSON), so a test can shorten them. ``start_gateway`` starts it the way
``tests/up_process.py`` starts ``keel up``; ``kill`` ends it with SIGKILL (no clean-up runs).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import msgspec

from eventstore.bus import Bus
from eventstore.server import nats_url
from services.config import load_config
from services.runtime import clock as clock_module
from services.venues.gateway.config import GatewayConfig
from services.venues.gateway.worker import Gateway
from tests.fakes.clock import ScaledClock
from tests.fakes.core import FakeExchange
from tests.up_process import fake_time_env

KEY_ENV, SECRET_ENV = "KEEL_TEST_KEY", "KEEL_TEST_SECRET"
NO_TESTNET = frozenset({"kraken"})
"""Exchanges ccxt knows no testnet of: their entry is in mode live (``live = true``)."""


def write_config(path: Path, fake: FakeExchange, venue: str) -> Path:
    """A fleet config (JSON, as ``load_config`` reads it) whose one venue is ``fake``,
    traded by a gateway, with its credentials in ``KEY_ENV``/``SECRET_ENV``."""
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
    gateway: GatewayConfig,
    secrets: tuple[str, str],
    log: Path,
) -> asyncio.subprocess.Process:
    """The gateway process of ``venue`` with its credentials in its environment only."""
    args = ["tests.gateway_process", "--config", str(config), "--venue", venue]
    args += ["--gateway", msgspec.json.encode(gateway).decode()]
    secret_env = {KEY_ENV: secrets[0], SECRET_ENV: secrets[1]}
    return await start_keel(args, cwd, url, clock, log, **secret_env)


async def kill(process: asyncio.subprocess.Process) -> int:
    """SIGKILL: the process ends wherever it is, nothing of it runs after this."""
    if process.returncode is None:
        os.kill(process.pid, signal.SIGKILL)
    return await process.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.gateway_process")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--venue", required=True)
    parser.add_argument("--gateway", required=True, help="a GatewayConfig as JSON")
    args = parser.parse_args(argv)
    venue = load_config(args.config).venue(args.venue)
    if venue is None:
        raise SystemExit(f"--venue {args.venue}: not in {args.config}")
    config = msgspec.json.decode(args.gateway, type=GatewayConfig)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s gateway-{venue.name} %(levelname)s %(message)s"
    )

    async def run() -> None:
        with nats_url() as url:
            bus = await Bus.connect(url, name=f"gateway-{venue.name}")
            gateway = Gateway(bus, venue, config, clock_module.system_clock())
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, gateway.stop)
            try:
                await gateway.run()
            finally:
                await bus.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
