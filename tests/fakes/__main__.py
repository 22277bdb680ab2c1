"""Serve one exchange fake by hand: ``python -m tests.fakes binance --rate 60 --symbols 3``.

Prints the ``[[venues]]`` TOML that points ccxt at it and, with ``--clock-env``, the
``KEEL_TEST_CLOCK`` value a worker needs to share its exchange time; runs until Ctrl-C.
``--load SECONDS`` (Binance ids) instead subscribes every symbol's ``--streams`` on one
websocket from a separate consumer process and prints the frames per second the fake
sustained, its CPU share and how many ticks it fell behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from tests.fakes.clock import ScaledClock
from tests.fakes.core import NS, SKINS, default_symbols, start_fake


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        inner = ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def venue_toml(entry: dict[str, Any]) -> str:
    lines = ["[[venues]]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in entry.items()]
    return "\n".join(lines)


async def serve(args: argparse.Namespace) -> None:
    start = args.start * NS if args.start else time.time_ns()
    clock = ScaledClock(start, args.rate)
    symbols = default_symbols(args.exchange, args.symbols)
    fake = await start_fake(args.exchange, symbols, clock, interval=args.interval)
    print(f"# {args.exchange} fake at {fake.http_url}, {len(symbols)} symbols, rate {args.rate}")
    print(f"# symbols: {', '.join(s.symbol for s in symbols[:10])}{' ...' * (len(symbols) > 10)}")
    if args.clock_env:
        print(f"# KEEL_TEST_CLOCK={clock.to_env()}")
    entry = fake.venue_entry(args.name or args.exchange)
    print(venue_toml(entry), flush=True)
    if args.ready:
        ready = {"clock": clock.to_env(), "entry": entry, "symbols": list(fake.specs)}
        Path(args.ready).write_text(json.dumps(ready))
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


CONSUMER = """
import asyncio, json, sys, time, aiohttp
async def consume(url, streams, seconds):
    count = 0
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, max_msg_size=0) as ws:
            await ws.send_str(json.dumps({"method": "SUBSCRIBE", "params": streams, "id": 1}))
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                await ws.receive()
                count += 1
    print(count)
asyncio.run(consume(sys.argv[1], sys.argv[2].split(","), float(sys.argv[3])))
"""


async def load(args: argparse.Namespace) -> None:
    """Frames per second the fake sustains to one websocket subscribed to everything."""
    if args.exchange not in ("binance", "binanceusdm"):
        raise SystemExit("--load speaks Binance's SUBSCRIBE: use binance or binanceusdm")
    clock = ScaledClock(time.time_ns(), args.rate)
    symbols = default_symbols(args.exchange, args.symbols)
    fake = await start_fake(args.exchange, symbols, clock, interval=args.interval)
    kinds = args.streams.split(",")
    streams = [f"{s.base}{s.quote}".lower() + f"@{kind}" for s in symbols for kind in kinds]
    consumer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CONSUMER, f"{fake.ws_url}/ws/0", ",".join(streams), str(args.load),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await asyncio.sleep(min(2.0, args.load / 4))  # subscribed and past the first close
        sent, wall, cpu, behind = (
            fake.frames_sent,
            time.monotonic(),
            time.process_time(),
            fake.behind,
        )
        out, _ = await consumer.communicate()
        wall = time.monotonic() - wall
        rate = (fake.frames_sent - sent) / wall
        share = (time.process_time() - cpu) / wall
        print(
            f"{args.exchange}: {len(symbols)} symbols x {','.join(kinds)} at rate {args.rate:g}: "
            f"sent {rate:.0f} frames/s, consumer read {int(out or 0)} in {args.load:g} s, "
            f"fake CPU {share:.0%}, ticks behind {fake.behind - behind} of {fake.ticks}"
        )
    finally:
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes", description=__doc__)
    parser.add_argument("exchange", choices=sorted(SKINS))
    parser.add_argument("--rate", type=float, default=1.0, help="exchange seconds per wall s")
    parser.add_argument("--symbols", type=int, default=3)
    parser.add_argument("--interval", default="1m")
    parser.add_argument("--name", default="", help="venue name (default: the exchange id)")
    parser.add_argument("--start", type=int, default=0, help="exchange start time, epoch s")
    parser.add_argument("--clock-env", action="store_true", help="print KEEL_TEST_CLOCK")
    parser.add_argument("--ready", default="", help="once serving, write clock and entry here")
    parser.add_argument("--load", type=float, default=0.0, help="measure for SECONDS")
    parser.add_argument("--streams", default="kline_1m,trade,bookTicker")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(load(args) if args.load else serve(args))


if __name__ == "__main__":
    main()
