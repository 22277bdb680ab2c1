"""``keel run gateway --venue NAME``: a venue's gateway in the foreground (docs/venues.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from cli.console import console, fail, load_config_or_exit, run
from eventstore.bus import Bus
from eventstore.server import nats_url
from services.runtime import clock as clock_module
from services.venues.gateway.worker import Gateway


def serve_gateway(
    config_path: Path | None,
    venue_name: str,
    live: bool,
    metrics_port: int = 0,
    metrics_addr: str = "127.0.0.1",
) -> None:
    """Run the gateway of ``venue_name`` until SIGTERM or Ctrl-C. A paper venue has no
    gateway; a live one needs ``--live`` (``keel up --live`` passes it)."""
    config = load_config_or_exit(config_path)
    venue = config.venue(venue_name)
    if venue is None:
        known = ", ".join(v.name for v in config.venues) or "none"
        raise fail(f"--venue {venue_name}: no [[venues]] entry has that name (known: {known})")
    if not venue.gateway_mode:
        raise fail(f"venue {venue.name} is in paper mode: the paper venue trades it, no gateway")
    if venue.mode == "live" and not live:
        raise fail(f"venue {venue.name} trades real money (mode live): pass --live to run it")
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s gateway-{venue.name} %(levelname)s %(message)s"
    )

    async def main() -> None:
        with nats_url() as url:
            bus = await Bus.connect(url, name=f"gateway-{venue.name}")
            gateway = Gateway(
                bus,
                venue,
                venue.gateway,
                clock_module.system_clock(),
                metrics_port=metrics_port,
                metrics_addr=metrics_addr,
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, gateway.stop)
            try:
                await gateway.run()
            finally:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await bus.close()
        console.print(f"gateway {venue.name} ({venue.exchange}, {venue.mode}): stopped")

    run(main())
