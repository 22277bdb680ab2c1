"""The live marketdata worker against an exchange fake: close-to-stored latency, CPU, memory.

One run, loopback only, each part its own process: a fresh embedded nats-server, the Binance
USDT-M fake (``python -m tests.fakes``), the real worker (``keel run marketdata --config
live.toml``, the fake's exchange clock shared through ``KEEL_TEST_CLOCK``) and this script,
which reads the stored bars.

- **Latency** per closed bar: the server's store time of the bar (JetStream metadata) minus
  the wall time of the candle's close on the exchange clock. That counts the fake sending
  the close, ccxt parsing it, the worker deciding it is closed, and the publish.
- **CPU** of the worker process (user + system over wall) and its **RSS**, sampled each
  exchange minute.

At ``--rate 60`` an exchange minute lasts a wall second, and the fake sends 4 kline updates
a minute plus the close per symbol: about 5 frames per symbol per wall second, or ~2,700
frames/s at 541 symbols, which is the order of Binance's real kline stream for that many
active perpetuals (an update every 250 ms when trading). The memory case runs ``--hours`` of
exchange time (an hour is a wall minute at rate 60) with trades and quotes on as well.

Usage::

    .venv/bin/python bench/venue_feed.py [--symbols 1,50,541] [--closes 30] [--hours 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import msgspec
from nats.js.api import DeliverPolicy

from contracts.codec import decode
from contracts.events import Bar
from eventstore.bus import Bus
from eventstore.server import EmbeddedServer
from tests.fakes.__main__ import venue_toml
from tests.fakes.clock import ScaledClock
from tests.up_process import fake_time_env

ROOT = Path(__file__).resolve().parents[1]
STEP_NS = 60_000_000_000
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


class Case(msgspec.Struct):
    symbols: int
    shards: int
    rate: float
    closes: int
    bars: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    keel_p50_ms: float
    keel_p99_ms: float
    cpu_pct: float
    rss_mb_start: float
    rss_mb_mid: float
    rss_mb_end: float
    trades: bool = False
    quotes: bool = False


def live_toml(entry: dict, symbols: list[str], trades: bool, quotes: bool, shards: int) -> str:
    listed = ", ".join(f'"{s}"' for s in symbols)
    return f"""
[market]
venue = "fx"
symbols = [{listed}]
interval = "1m"
trades = {str(trades).lower()}
quotes = {str(quotes).lower()}
stall_grace_s = 30
lockstep = false
shards = {shards}

{venue_toml(entry)}
"""


async def close_sent(entry: dict) -> dict[tuple[str, int], int]:
    """When the fake sent each symbol's closing frame (the next candle's first), wall ns."""
    base = entry["urls"]["api"]["fapiPublic"].split("/fapi/")[0]
    async with aiohttp.ClientSession() as session, session.get(f"{base}/__fake/close-sent") as r:
        rows = await r.json()
    return {(symbol, close): wall for symbol, close, wall in rows}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stored_ns(reply: str) -> int:
    """The store time JetStream puts in a message's ack subject (ns, exact)."""
    return int(reply.split(".")[-2])


async def start_fake_process(
    n: int, rate: float, work: Path
) -> tuple[asyncio.subprocess.Process, dict]:
    """The fake in its own process, so its sending does not share a core with the reader."""
    ready = work / "fake.json"
    now = time.time_ns()
    start_s = (now - now % STEP_NS) // 10**9 - 2 * 3600
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes", "binanceusdm", "--rate", str(rate),
        "--symbols", str(n), "--name", "fx", "--start", str(start_s), "--ready", str(ready),
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.returncode is not None or time.monotonic() > deadline:
            raise SystemExit("the exchange fake did not start")
        await asyncio.sleep(0.05)
    return proc, json.loads(ready.read_text())


async def run_case(
    n: int,
    rate: float,
    closes: int,
    *,
    shards: int = 1,
    trades: bool = False,
    quotes: bool = False,
) -> Case:
    with tempfile.TemporaryDirectory(prefix="keel-venue-bench-") as tmp:
        work = Path(tmp)
        server = EmbeddedServer(work / "nats").start()
        fake, ready = await start_fake_process(n, rate, work)
        clock = ScaledClock.from_env(ready["clock"])
        config = work / "live.toml"
        config.write_text(live_toml(ready["entry"], ready["symbols"], trades, quotes, shards))
        env = fake_time_env(server.url, clock)
        log = (work / "marketdata.log").open("wb")
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "cli.app",
                "run",
                "marketdata",
                "--config",
                str(config),
                "--shard",
                str(i),
                cwd=work,
                env=env,
                stdout=log,
                stderr=log,
            )
            for i in range(shards)
        ]
        bus = await Bus.connect(server.url, name="bench")
        stored: list[tuple[str, int, int]] = []  # symbol, close (exchange ns), stored (wall ns)
        seen: dict[int, int] = {}

        async def on_bar(msg) -> None:
            event = decode(msg.data)
            if isinstance(event, Bar):
                stored.append((event.symbol, event.close_time, stored_ns(msg.reply)))
                seen[event.close_time] = seen.get(event.close_time, 0) + 1

        sub = await bus.js.subscribe(
            "md.bar.>", stream="MARKET", cb=on_bar, ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not any(count == n for count in seen.values()):  # every symbol streaming
                if any(p.returncode is not None for p in procs) or time.monotonic() > deadline:
                    raise SystemExit(f"the worker did not stream: see {work}/marketdata.log")
                await asyncio.sleep(0.05)
            await clock.sleep(3 * STEP_NS / 1e9)  # warm-up closes
            stored.clear()
            cpu0, wall0 = sum(cpu_seconds(p.pid) for p in procs), time.monotonic()
            rss = [sum(rss_mb(p.pid) for p in procs)]
            for _ in range(closes):
                await clock.sleep(STEP_NS / 1e9)
                rss.append(sum(rss_mb(p.pid) for p in procs))
            await clock.sleep(5)  # the last close's bars
            wall = time.monotonic() - wall0
            cpu = (sum(cpu_seconds(p.pid) for p in procs) - cpu0) / wall * 100
            sent = await close_sent(ready["entry"])
        finally:
            await sub.unsubscribe()
            for child in (*procs, fake):
                child.terminate()
                await child.wait()
            await bus.close()
            server.stop()
            log.close()
        ordered = sorted(
            (at - clock.wall0_ns - (close - clock.start_ns) / rate) / 1e6 for _, close, at in stored
        )
        keel = sorted(
            (at - sent[(symbol, close)]) / 1e6
            for symbol, close, at in stored
            if (symbol, close) in sent
        )
        return Case(
            symbols=n,
            shards=shards,
            rate=rate,
            closes=closes,
            bars=len(ordered),
            p50_ms=round(statistics.median(ordered), 2),
            p99_ms=round(ordered[int(0.99 * (len(ordered) - 1))], 2),
            max_ms=round(ordered[-1], 2),
            keel_p50_ms=round(statistics.median(keel), 2),
            keel_p99_ms=round(keel[int(0.99 * (len(keel) - 1))], 2),
            cpu_pct=round(cpu, 1),
            rss_mb_start=round(rss[1] if len(rss) > 1 else rss[0], 1),
            rss_mb_mid=round(rss[len(rss) // 2], 1),
            rss_mb_end=round(rss[-1], 1),
            trades=trades,
            quotes=quotes,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", default="1,50,541", help="comma-separated symbol counts")
    parser.add_argument(
        "--shards", default="1,2", help="feed processes, each tried at the largest count"
    )
    parser.add_argument("--rate", type=float, default=60.0, help="exchange seconds per wall s")
    parser.add_argument("--closes", type=int, default=30, help="measured closes per case")
    parser.add_argument("--hours", type=float, default=1.0, help="memory case: exchange hours")
    parser.add_argument("--memory-symbols", type=int, default=541)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    counts = [int(n) for n in args.symbols.split(",")]
    cases = [asyncio.run(run_case(n, args.rate, args.closes)) for n in counts]
    cases += [
        asyncio.run(run_case(max(counts), args.rate, args.closes, shards=int(k)))
        for k in args.shards.split(",")
        if int(k) > 1
    ]
    memory = None
    if args.hours > 0:
        memory = asyncio.run(
            run_case(
                args.memory_symbols,
                args.rate,
                int(args.hours * 60),
                trades=True,
                quotes=True,
            )
        )
    if args.json:
        print(
            json.dumps(
                {"latency": msgspec.to_builtins(cases), "memory": msgspec.to_builtins(memory)}
            )
        )
        return
    print(
        f"# {platform.node()} {os.cpu_count()} cpus, rate {args.rate}, python {platform.python_version()}"
    )
    print(
        "| symbols | feed processes | bars | close -> stored p50 / p99 / max ms "
        "| frame sent -> stored p50 / p99 ms | feed CPU % | RSS MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for c in cases:
        print(
            f"| {c.symbols} | {c.shards} | {c.bars} | {c.p50_ms} / {c.p99_ms} / {c.max_ms} "
            f"| {c.keel_p50_ms} / {c.keel_p99_ms} | {c.cpu_pct} | {c.rss_mb_end} |"
        )
    if memory is not None:
        print(
            f"\nmemory, {memory.symbols} symbols with trades and quotes, {memory.closes} exchange "
            f"minutes: RSS {memory.rss_mb_start} MB after the first minute, "
            f"{memory.rss_mb_mid} MB half way, {memory.rss_mb_end} MB at the end; "
            f"CPU {memory.cpu_pct} %; "
            f"p50 {memory.p50_ms} / p99 {memory.p99_ms} ms"
        )


if __name__ == "__main__":
    main()
