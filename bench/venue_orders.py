"""Signal to order acknowledged by an exchange fake, and fill to ledger update, through a
venue gateway, next to the paper venue on the same signals.

One run, loopback only, each part its own process: a fresh embedded nats-server; the Binance
USDT-M fake with order matching (``tests/fakes/``), served by this script's ``--serve-fake``
mode so it can note when its engine acted on each order and each trade (the fakes record
only candle closes for benchmarks); the fleet's workers as ``keel run risk``, ``keel run
execution`` (order manager, ``GatewayVenue`` and the paper venue), ``keel run portfolio``
and ``keel run gateway --venue bx`` (its ``[[venues]]`` entry in ``mode = "sandbox"``, ccxt
pointed at the fake, the API key and secret in environment variables); no strategy: this
script publishes the ``Signal`` events itself, each right after a bar of its market that
closes at the signal's time, so risk has a price and the paper venue (``fill = "close"``)
fills a market order as soon as it sees it.

Every tick the script sends one signal to the gateway venue ``bx`` and, half a period later,
the same one to the paper venue ``px``: target positions that flip between ``--notional`` USDT worth and 0,
so every signal makes one market order. The fleet therefore gets twice ``--rates`` signals a
second. Latencies come from JetStream's stored timestamps (exact ns, one clock, one machine),
per signal, followed through its correlation id to the order and then by the order's client
id:

- gateway, to the acknowledgement: signal -> ``ord.cmd`` (risk) -> ``venue.order`` (order
  manager) -> the fake's engine took the order (its REST answer leaves microseconds later:
  no ack delay is configured) -> ``VenueAnswer(kind="accepted")`` stored (ccxt parsing the
  answer, the gateway recording it); and signal -> accepted ``exec.report``;
- gateway, the fill: the fake's trade -> fill ``VenueAnswer`` stored (the REST answer or the
  private stream, whichever the gateway saw first) -> fill ``exec.report`` -> ``pf.position``
  (the ledger update);
- paper: signal -> ``ord.cmd`` -> accepted / filled ``exec.report`` -> ``pf.position``.

Usage::

    .venv/bin/python bench/venue_orders.py [--rates 2,5,20] [--signals 200] [--json] [--keep]
    .venv/bin/python bench/venue_orders.py --quick
    .venv/bin/python bench/venue_orders.py --ccxt-alone 20   # ccxt's create_order alone

ccxt's rate limiter (always on in Keel) spaces Binance USDT-M orders 200 ms apart and the
gateway sends one at a time, so above ~4 orders a second the orders queue in the gateway
(``docs/performance.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from contracts.codec import decode
from contracts.envelope import Envelope, content_id
from contracts.events import Bar, Event, ExecutionReport, OrderCommand, PositionChanged, Signal
from contracts.venue_events import VenueAnswer, VenueOrder, VenueStatus
from eventstore.bus import Bus
from eventstore.server import URL_ENV, EmbeddedServer
from eventstore.tally import count
from tests.fakes.__main__ import toml_value, venue_toml

ROOT = Path(__file__).resolve().parents[1]
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
GATEWAY, PAPER = "bx", "px"
EXCHANGE = "binanceusdm"
STRATEGY = "bench"
KEY_ENV, SECRET_ENV = "KEEL_BENCH_KEY", "KEEL_BENCH_SECRET"
KEY = "bench-key-0123456789"
WORKERS = ("risk", "execution", "portfolio", "gateway")
STREAMS = {
    "SIGNALS": "sig.>",
    "ORDERS": "ord.cmd.>",
    "VENUE": "venue.>",
    "EXECUTION": "exec.report.>",
    "PORTFOLIO": "pf.position.>",
}


# -- the fake, in its own process -----------------------------------------------------------


async def serve_fake(work: Path) -> None:
    """The Binance USDT-M fake on the wall clock, noting when its engine acted on each
    client order id (first sight) and each trade; the notes are written on SIGTERM."""
    from tests.fakes.clock import ScaledClock
    from tests.fakes.core import default_symbols, start_fake

    spec = default_symbols(EXCHANGE, 1)[0]
    fake = await start_fake(EXCHANGE, [spec], ScaledClock(time.time_ns(), 1.0))
    acks: dict[str, int] = {}
    trades: dict[str, int] = {}

    def noted(order: Any, fill: Any) -> None:
        now = time.time_ns()
        acks.setdefault(order.client_id, now)
        if fill is not None:
            trades.setdefault(str(fill.trade_id), now)

    fake.account.on_update(noted)
    ready = {
        "entry": fake.venue_entry(GATEWAY),
        "symbol": spec.symbol,
        "price": spec.price,
        "lot": spec.lot_size,
        "secret": fake.api_secret,
    }
    (work / "fake.json").write_text(json.dumps(ready))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    (work / "fake-notes.json").write_text(
        json.dumps({"acks": acks, "trades": trades, "requests": dict(fake.requests)})
    )
    await fake.stop()


async def start_fake_process(work: Path) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    ready = work / "fake.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).resolve()), "--serve-fake", str(work),
        cwd=ROOT, stdout=(work / "fake.log").open("wb"), stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.returncode is not None or time.monotonic() > deadline:
            raise SystemExit(f"the exchange fake did not start: see {work}/fake.log")
        await asyncio.sleep(0.05)
    return proc, json.loads(ready.read_text())


async def ccxt_alone(orders: int, gap_s: float) -> dict[str, dict[str, float]]:
    """ccxt's own share, in this process: ``orders`` market orders one after the other
    (``gap_s`` apart) against the fake, with ccxt's rate limiter on (as the gateway runs
    it) and off: wall ms per ``create_order`` and CPU ms per order."""
    from services.venues.ccxt_exchange import build_exchange
    from services.venues.config import VenueConfig
    from tests.fakes.clock import ScaledClock
    from tests.fakes.core import default_symbols, start_fake

    spec = default_symbols(EXCHANGE, 1)[0]
    fake = await start_fake(EXCHANGE, [spec], ScaledClock(time.time_ns(), 1.0))
    venue = msgspec.convert({**fake.venue_entry(GATEWAY), "sandbox": True}, VenueConfig)
    qty = round(max(spec.lot_size, round(120.0 / spec.price / spec.lot_size) * spec.lot_size), 8)
    out = {}
    try:
        for limiter in (True, False):
            exchange = build_exchange(venue, {"apiKey": KEY, "secret": fake.api_secret})
            exchange.enableRateLimit = limiter
            await exchange.load_markets()
            walls, cpu = [], 0.0
            for i in range(orders):
                side = "buy" if i % 2 == 0 else "sell"
                cpu0, wall0 = time.process_time(), time.perf_counter()
                await exchange.create_order(spec.symbol, "market", side, qty)
                walls.append((time.perf_counter() - wall0) * 1e3)
                cpu += time.process_time() - cpu0
                await asyncio.sleep(gap_s)
            await exchange.close()
            later = walls[1:]  # the first order finds the limiter's bucket full
            out["rate limiter on" if limiter else "rate limiter off"] = {
                "first_ms": round(walls[0], 1),
                "p50_ms": round(statistics.median(later), 1),
                "max_ms": round(max(later), 1),
                "cpu_ms_per_order": round(cpu * 1e3 / orders, 2),
            }
    finally:
        await fake.stop()
    return out


# -- the fleet ------------------------------------------------------------------------------


def fleet_toml(entry: dict[str, Any], reconcile_every_s: float) -> str:
    venue = {
        **entry,
        "mode": "sandbox",
        "sandbox": True,
        "timeout_ms": 3000,
        "credentials": {"api_key_env": KEY_ENV, "secret_env": SECRET_ENV},
    }
    return f"""
# Written by bench/venue_orders.py: no strategy, the bench publishes the signals.
[execution]
fill = "close"
fee_bps = 10

{venue_toml(venue)}

[venues.gateway]
reconcile_every_s = {toml_value(reconcile_every_s)}
"""


async def start_workers(
    work: Path, url: str, config: Path, secret: str
) -> dict[str, asyncio.subprocess.Process]:
    env = {**os.environ, URL_ENV: url, "PYTHONPATH": str(ROOT), KEY_ENV: KEY, SECRET_ENV: secret}
    procs = {}
    for name in WORKERS:
        command = ["-m", "cli.app", "run", name, "--config", str(config)]
        if name == "gateway":
            command += ["--venue", GATEWAY]
        log = (work / f"{name}.log").open("wb")
        procs[name] = await asyncio.create_subprocess_exec(
            sys.executable, *command,
            cwd=work, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    return procs


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- the signals ----------------------------------------------------------------------------


class Sender:
    """Publishes a bar closing at the signal's time, then the signal, per venue; keeps the
    target flipping between ``qty`` and 0 so every signal is one market order."""

    def __init__(self, bus: Bus, symbol: str, price: float, qty: float, run: str) -> None:
        self.bus = bus
        self.symbol = symbol
        self.price = price
        self.qty = qty
        self.run = run
        self.n = 0
        self.held = {GATEWAY: 0.0, PAPER: 0.0}
        self.last_close = {GATEWAY: 0, PAPER: 0}
        self.phase_of: dict[str, tuple[str, str]] = {}  # signal id -> (phase, venue)

    async def send(self, venue: str, phase: str) -> None:
        now = time.time_ns()
        opened = self.last_close[venue] or now - 1_000_000_000
        self.last_close[venue] = now
        bar = Bar(
            ts=now, venue=venue, symbol=self.symbol, interval="1s", open_time=opened,
            close_time=now, open=self.price, high=self.price, low=self.price,
            close=self.price, volume=1.0,
        )  # fmt: skip
        await self.bus.publish(
            bar, Envelope.root(content_id("bench-bar", self.run, venue, now), now)
        )
        target = 0.0 if self.held[venue] else self.qty
        self.held[venue] = target
        self.n += 1
        sig = Signal(
            ts=now, strategy=STRATEGY, venue=venue, symbol=self.symbol,
            target_position=target, reason=phase,
        )  # fmt: skip
        sid = content_id("bench-signal", self.run, self.n)
        self.phase_of[sid] = (phase, venue)
        await self.bus.publish(sig, Envelope.root(sid, now), producer="bench")

    async def paced(self, phase: str, rate: float, n: int) -> None:
        """``n`` ticks at ``rate`` a second: the gateway venue's signal on the tick, the
        paper venue's half a period later."""
        period = 1.0 / rate
        start = time.monotonic()
        for k in range(n):
            for half, venue in ((0.0, GATEWAY), (0.5, PAPER)):
                delay = start + (k + half) * period - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.send(venue, phase)


async def settled(bus: Bus, expected: int, timeout: float) -> bool:
    """Every signal so far reached the ledger (one position change per signal)."""
    deadline = time.monotonic() + timeout
    while await count(bus, "PORTFOLIO", "pf.position.>") < expected:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.25)
    return True


async def gateway_running(bus: Bus, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in await read_all(bus, "VENUE", f"venue.status.{GATEWAY}"):
            if isinstance(item.event, VenueStatus) and item.event.state == "running":
                return True
        await asyncio.sleep(0.5)
    return False


# -- reading back ---------------------------------------------------------------------------


class Row(msgspec.Struct, frozen=True):
    stored_ns: int
    envelope: Envelope
    event: Event


async def read_all(bus: Bus, stream: str, subjects: str) -> list[Row]:
    """Every event of ``subjects`` with the server's store time (exact ns from the ack
    subject), until caught up."""
    got: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await bus.js.subscribe(
        subjects, stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL,
        cb=got.put,
    )  # fmt: skip
    rows: list[Row] = []
    try:
        info = await sub.consumer_info()
        if not info.num_pending and not (info.delivered and info.delivered.consumer_seq):
            return rows
        while True:
            msg = await asyncio.wait_for(got.get(), 30)
            rows.append(
                Row(
                    int(msg.reply.split(".")[-2]),
                    Envelope.from_headers(msg.headers),
                    decode(msg.data),
                )
            )
            if msg.metadata.num_pending == 0:
                return rows
    finally:
        await sub.unsubscribe()


# -- the figures ----------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


class Stage(msgspec.Struct):
    name: str
    n: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def stage(name: str, values: Iterable[float]) -> Stage:
    ms = [v / 1e6 for v in values]
    if not ms:
        return Stage(name, 0, float("nan"), float("nan"), float("nan"))
    return Stage(name, len(ms), round(statistics.median(ms), 2), round(pct(ms, 99), 2),
                 round(max(ms), 2))  # fmt: skip


class Phase(msgspec.Struct):
    rate: float
    signals: int
    gateway: list[Stage]
    paper: list[Stage]
    ratios: dict[str, float]
    acks_per_s: float
    """Orders the fake took per second over the phase: the gateway's throughput."""
    cpu_pct: dict[str, float]
    cpu_ms_per_signal: dict[str, float]
    """Per signal the worker handled (the gateway: its venue's; the others: both)."""
    rss_mb: dict[str, float]
    missing: dict[str, int]
    fill_sources: dict[str, int]
    """Where the gateway first saw each fill (``stream``, ``submit``, ``poll``...)."""


class Trace(msgspec.Struct):
    """One signal's events, first of each kind, by store time."""

    signal: int = 0
    order: int = 0
    venue_order: str = ""
    venue_order_at: int = 0
    accepted: int = 0
    fill_answer: int = 0
    trade_id: str = ""
    fill_source: str = ""
    report_accepted: int = 0
    report_fill: int = 0
    position: int = 0


def traces(rows: list[Row]) -> dict[str, Trace]:
    """Per signal (its correlation id): the order risk made of it, then everything about
    that order by its client order id. A paper order that reached execution before its bar
    fills when the bar comes, under the bar's envelope: the order's id still finds it, and
    the position change names the report it follows (causation id)."""
    rows = sorted(rows, key=lambda r: r.stored_ns)
    order_of: dict[str, str] = {}  # client order id -> signal
    out: dict[str, Trace] = {}
    for row in rows:
        e, at = row.event, row.stored_ns
        if isinstance(e, Signal):
            out.setdefault(row.envelope.correlation_id, Trace()).signal = at
        elif isinstance(e, OrderCommand) and e.client_order_id not in order_of:
            order_of[e.client_order_id] = row.envelope.correlation_id
            out.setdefault(row.envelope.correlation_id, Trace()).order = at
    fill_report: dict[str, Trace] = {}  # a fill report's event id -> its signal's trace
    for row in rows:
        e, at = row.event, row.stored_ns
        if isinstance(e, PositionChanged):
            t = fill_report.get(row.envelope.causation_id)
            if t is not None and not t.position:
                t.position = at
            continue
        coid = getattr(e, "client_order_id", "")
        if coid not in order_of:
            continue
        t = out[order_of[coid]]
        if isinstance(e, VenueOrder) and e.action == "new" and not t.venue_order_at:
            t.venue_order, t.venue_order_at = e.venue_client_id, at
        elif isinstance(e, VenueAnswer):
            if e.kind == "accepted" and not t.accepted:
                t.accepted = at
            elif e.kind == "fill" and not t.fill_answer:
                t.fill_answer, t.trade_id, t.fill_source = at, e.trade_id, e.source
        elif isinstance(e, ExecutionReport):
            if e.status == "accepted" and not t.report_accepted:
                t.report_accepted = at
            if e.fill_qty > 0 and not t.report_fill:
                t.report_fill = at
                fill_report[row.envelope.event_id] = t
    return out


def diffs(pairs: Iterable[tuple[int, int]]) -> list[float]:
    return [b - a for a, b in pairs if a and b]


def figures(
    phase: str,
    rate: float,
    found: dict[str, Trace],
    sender: Sender,
    notes: dict[str, dict[str, int]],
    usage: tuple[dict[str, float], dict[str, float], dict[str, float]],
) -> Phase:
    gw = [
        found.get(s, Trace()) for s, (p, v) in sender.phase_of.items() if (p, v) == (phase, GATEWAY)
    ]
    pp = [
        found.get(s, Trace()) for s, (p, v) in sender.phase_of.items() if (p, v) == (phase, PAPER)
    ]
    acks, trades = notes.get("acks", {}), notes.get("trades", {})

    def ack(t: Trace) -> int:
        return acks.get(t.venue_order, 0)

    def traded(t: Trace) -> int:
        return trades.get(t.trade_id, 0)

    gateway = [
        stage("signal -> ord.cmd", diffs((t.signal, t.order) for t in gw)),
        stage("ord.cmd -> venue.order", diffs((t.order, t.venue_order_at) for t in gw)),
        stage("venue.order -> fake took it", diffs((t.venue_order_at, ack(t)) for t in gw)),
        stage("fake took it -> accepted stored", diffs((ack(t), t.accepted) for t in gw)),
        stage("signal -> accepted stored", diffs((t.signal, t.accepted) for t in gw)),
        stage("signal -> exec.report accepted", diffs((t.signal, t.report_accepted) for t in gw)),
        stage("fake trade -> fill answer stored", diffs((traded(t), t.fill_answer) for t in gw)),
        stage("fill answer -> exec.report fill", diffs((t.fill_answer, t.report_fill) for t in gw)),
        stage("exec.report fill -> pf.position", diffs((t.report_fill, t.position) for t in gw)),
        stage("fill answer -> pf.position", diffs((t.fill_answer, t.position) for t in gw)),
        stage("signal -> exec.report fill", diffs((t.signal, t.report_fill) for t in gw)),
        stage("signal -> pf.position", diffs((t.signal, t.position) for t in gw)),
    ]
    paper = [
        stage("signal -> ord.cmd", diffs((t.signal, t.order) for t in pp)),
        stage("ord.cmd -> exec.report accepted", diffs((t.order, t.report_accepted) for t in pp)),
        stage("signal -> exec.report accepted", diffs((t.signal, t.report_accepted) for t in pp)),
        stage("exec.report fill -> pf.position", diffs((t.report_fill, t.position) for t in pp)),
        stage("signal -> exec.report fill", diffs((t.signal, t.report_fill) for t in pp)),
        stage("signal -> pf.position", diffs((t.signal, t.position) for t in pp)),
    ]
    by_name = {s.name: s for s in paper}
    ratios = {
        s.name: round(s.p50_ms / by_name[s.name].p50_ms, 2)
        for s in gateway
        if s.name in by_name and by_name[s.name].p50_ms > 0
    }
    missing = {
        "gateway accepted": sum(1 for t in gw if not t.accepted),
        "gateway position": sum(1 for t in gw if not t.position),
        "paper position": sum(1 for t in pp if not t.position),
        "fake ack notes": sum(1 for t in gw if t.venue_order and not ack(t)),
    }
    took = sorted(ack(t) for t in gw if ack(t))
    span = (took[-1] - took[0]) / 1e9 if len(took) > 1 else 0.0
    acks_per_s = round((len(took) - 1) / span, 2) if span > 0 else 0.0
    cpu_pct, cpu_s, rss = usage
    per_signal = {
        name: round(seconds * 1000 / (len(gw) if name in ("gateway", "fake") else 2 * len(gw)), 2)
        for name, seconds in cpu_s.items()
        if gw
    }
    sources: dict[str, int] = {}
    for t in gw:
        if t.fill_source:
            sources[t.fill_source] = sources.get(t.fill_source, 0) + 1
    return Phase(
        rate, len(gw), gateway, paper, ratios, acks_per_s, cpu_pct, per_signal, rss, missing,
        sources,
    )  # fmt: skip


# -- one run --------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> tuple[list[Phase], str]:
    rates = [float(r) for r in args.rates.split(",")]
    work = Path(tempfile.mkdtemp(prefix="keel-orders-bench-"))
    server = EmbeddedServer(work / "nats").start()
    fake, ready = await start_fake_process(work)
    config = work / "keel.toml"
    config.write_text(fleet_toml(ready["entry"], args.reconcile_every_s))
    procs = await start_workers(work, server.url, config, ready["secret"])
    bus = await Bus.connect(server.url, name="bench")
    lot = ready["lot"]
    qty = round(max(lot, round(args.notional / ready["price"] / lot) * lot), 8)
    sender = Sender(bus, ready["symbol"], ready["price"], qty, str(time.time_ns()))
    phases: list[tuple[str, float, tuple[dict[str, float], dict[str, float], dict[str, float]]]]
    phases = []
    try:
        if not await gateway_running(bus, 90):
            raise SystemExit(f"the gateway did not report running: see {work}/gateway.log")
        await sender.paced("warmup", 2.0, args.warmup)
        if not await settled(bus, sender.n, 90):
            raise SystemExit(f"the warm-up signals did not reach the ledger: see {work}/*.log")
        for rate in rates:
            pids = {name: p.pid for name, p in procs.items()} | {"fake": fake.pid}
            cpu0, wall0 = {n: cpu_seconds(pid) for n, pid in pids.items()}, time.monotonic()
            await sender.paced(f"rate{rate:g}", rate, args.signals)
            ok = await settled(bus, sender.n, 120)
            wall = time.monotonic() - wall0
            used = {n: cpu_seconds(pid) - cpu0[n] for n, pid in pids.items()}
            cpu = {n: round(seconds / wall * 100, 1) for n, seconds in used.items()}
            rss = {n: round(rss_mb(pid), 1) for n, pid in pids.items()}
            phases.append((f"rate{rate:g}", rate, (cpu, used, rss)))
            await asyncio.sleep(1.0)  # a pause between phases
            print(
                f"rate {rate:g}/s: {args.signals} x 2 signals sent, settled: {ok}", file=sys.stderr
            )
            if not ok:
                break
        rows: list[Row] = []
        for stream, subjects in STREAMS.items():
            rows += await read_all(bus, stream, subjects)
    finally:
        for proc in procs.values():
            if proc.returncode is None:
                proc.terminate()
        for proc in procs.values():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 20)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        fake.terminate()
        await fake.wait()
        await bus.close()
        server.stop()
    notes_file = work / "fake-notes.json"
    notes = json.loads(notes_file.read_text()) if notes_file.exists() else {}
    found = traces(rows)
    out = [figures(name, rate, found, sender, notes, usage) for name, rate, usage in phases]
    if not args.keep and out and not any(any(p.missing.values()) for p in out):
        shutil.rmtree(work, ignore_errors=True)
        return out, ""
    return out, str(work)


def print_table(phases: list[Phase], args: argparse.Namespace, work: str) -> None:
    print(
        f"# {platform.node()} {os.cpu_count()} cpus, python {platform.python_version()}, "
        f"{EXCHANGE} fake, {args.signals} signals per venue per rate"
        + (f", store kept in {work}" if work else "")
    )
    for ph in phases:
        print(f"\n## {ph.rate:g} signals/s per venue ({2 * ph.rate:g}/s into the fleet)\n")
        print("| gateway venue (sandbox, fake) | n | p50 ms | p99 ms | max ms |")
        print("|---|---|---|---|---|")
        for s in ph.gateway:
            print(f"| {s.name} | {s.n} | {s.p50_ms} | {s.p99_ms} | {s.max_ms} |")
        print(
            "\n| paper venue (same signals) | n | p50 ms | p99 ms | max ms | gateway / paper (p50) |"
        )
        print("|---|---|---|---|---|---|")
        for s in ph.paper:
            ratio = ph.ratios.get(s.name, "")
            print(f"| {s.name} | {s.n} | {s.p50_ms} | {s.p99_ms} | {s.max_ms} | {ratio} |")
        cpu = ", ".join(f"{k} {v} %" for k, v in ph.cpu_pct.items())
        per = ", ".join(f"{k} {v}" for k, v in ph.cpu_ms_per_signal.items())
        rss = ", ".join(f"{k} {v}" for k, v in ph.rss_mb.items())
        print(f"\norders the fake took: {ph.acks_per_s}/s (offered {ph.rate:g}/s)")
        print(f"fills first seen by the gateway from: {ph.fill_sources}")
        print(f"CPU over the phase: {cpu}\nCPU ms per signal: {per}\nRSS MB: {rss}")
        if any(ph.missing.values()):
            print(f"missing: {ph.missing}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="2,5,20", help="signals per second per venue")
    parser.add_argument(
        "--signals", type=int, default=200, help="measured signals per venue and rate"
    )
    parser.add_argument("--warmup", type=int, default=6, help="unmeasured signals per venue first")
    parser.add_argument("--notional", type=float, default=120.0, help="order size in USDT")
    parser.add_argument(
        "--reconcile-every-s", type=float, default=60.0, help="the gateway's reconciliation period"
    )
    parser.add_argument("--quick", action="store_true", help="--rates 2,20 --signals 20")
    parser.add_argument("--keep", action="store_true", help="keep the store and the logs")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--ccxt-alone", type=int, default=0, help="only time N orders through ccxt, in process"
    )
    parser.add_argument("--gap", type=float, default=0.5, help="--ccxt-alone: seconds between")
    parser.add_argument("--serve-fake", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake:
        asyncio.run(serve_fake(Path(args.serve_fake)))
        return
    if args.ccxt_alone:
        alone = asyncio.run(ccxt_alone(args.ccxt_alone, args.gap))
        for name, row in alone.items():
            print(f"ccxt create_order, {name}, {args.gap:g} s apart: {row}")
        return
    if args.quick:
        args.rates, args.signals = "2,20", 20
    phases, work = asyncio.run(run(args))
    if args.json:
        print(json.dumps({"phases": msgspec.to_builtins(phases), "work": work}))
    else:
        print_table(phases, args, work)
    if len(phases) < len(args.rates.split(",")) or any(any(p.missing.values()) for p in phases):
        raise SystemExit(f"some signals did not reach the ledger: see {work}")


if __name__ == "__main__":
    main()
