"""Serve the TWS fake by hand: ``python -m tests.fakes.tws --port 4002 --rate 60``.

Prints the ``[[venues]]`` entry that points Keel at it and, with ``--clock-env``, the
``KEEL_TEST_CLOCK`` value a worker needs to share its exchange time; runs until Ctrl-C.
``--start`` picks the exchange time to begin at (epoch seconds; default now); ``--ready PATH``
writes the port, clock and account as JSON once it listens (for a harness that starts it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from pathlib import Path

from tests.fakes.clock import ScaledClock
from tests.fakes.tws.market import NS
from tests.fakes.tws.server import TwsFake


def venue_toml(host: str, port: int, account: str) -> str:
    """A ``[[venues]]`` entry trading the fake's paper account: a stock and the ES front month."""
    return f"""[[venues]]
name = "ib"
kind = "ib"
mode = "demo"

[venues.ib]
host = "{host}"
port = {port}
client_id = 1
account = "{account}"

[[venues.ib.contracts]]
type = "stock"
symbol = "AAPL"
primary_exchange = "NASDAQ"

[[venues.ib.contracts]]
type = "future"
root = "ES"
exchange = "CME"
expiry = "front"
roll_days = 8"""


async def serve(args: argparse.Namespace) -> None:
    start = int(args.start * NS) if args.start else time.time_ns()
    clock = ScaledClock(start, args.rate)
    fake = TwsFake(clock, port=args.port, host=args.host, account=args.account)
    await fake.start()
    names = ", ".join(sorted({x.localSymbol for x in fake.catalogue}))
    print(f"# TWS fake (server version 178) at {args.host}:{fake.port}, rate {args.rate}")
    print(f"# account {args.account}; contracts: {names}")
    if args.clock_env:
        print(f"# KEEL_TEST_CLOCK={clock.to_env()}")
    print(venue_toml(args.host, fake.port, args.account), flush=True)
    if args.ready:
        ready = {"port": fake.port, "clock": clock.to_env(), "account": args.account}
        Path(args.ready).write_text(json.dumps(ready))
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.tws", description=__doc__)
    parser.add_argument("--port", type=int, default=4002, help="4002 is IB Gateway's paper port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--rate", type=float, default=1.0, help="exchange seconds per wall second")
    parser.add_argument("--start", type=float, default=0.0, help="exchange start, epoch seconds")
    parser.add_argument("--account", default="DU1234567")
    parser.add_argument("--clock-env", action="store_true")
    parser.add_argument("--ready", default="", help="write port, clock and account here (JSON)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
