"""Serve one exchange fake by hand: ``python -m tests.fakes binance --rate 60 --symbols 3``.

Prints the ``[[venues]]`` TOML that points ccxt at it and, with ``--clock-env``, the
``KEEL_TEST_CLOCK`` value a worker needs to share its exchange time; runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
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
    print(venue_toml(fake.venue_entry(args.name or args.exchange)), flush=True)
    try:
        await asyncio.Event().wait()
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
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
