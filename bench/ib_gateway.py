"""IB through ib_async next to a crypto exchange through ccxt: order round trips, fill to
Keel and reconnect recovery, measured side by side in one run.

Loopback only, each fake in its own process (so its work does not share the bench's event
loop): the TWS fake (``tests/fakes/tws/``) and the Binance USDT-M fake (``tests/fakes/``),
each served by this script's ``--serve`` mode and driven by JSON lines on its stdin. The
bench process holds the real client code paths: ``IbExchange`` over ``IbConnection`` and
ib_async (built by ``services/venues/ib/wiring.py`` as the gateway builds it), and ccxt's
``binanceusdm`` (built by ``services/venues/ccxt_exchange.py``), with its rate limiter on
(as the gateway runs it) and off. Times are ``CLOCK_MONOTONIC`` (one clock for every
process on the machine), so the fakes' notes line up with the bench's.

Per trial, IB then ccxt (limiter off) then ccxt (limiter on), so all three see the same noise:

- **round trip**: ``create_order`` of a market order and of a resting limit order to the
  venue's answer, and ``cancel_order`` of the limit to its answer; for new orders also the
  outbound leg (call -> the fake took it);
- **fill to Keel** (IB): the fake's execution -> the fill (with its commission report)
  yielded by ``IbExchange.watch_my_trades``, for a market order's fill at placement and a
  resting order's later fill;
- **reconnect** (IB, ``--reconnects`` drops on a fresh account and as many after the
  trials, when the account holds their orders and executions): ``--away`` resting orders
  are filled while no client hears it (``faults.fill_away``) and the fake drops every
  socket (``faults.drop``); timed from the drop to the disconnect seen, to the handshake
  done, to ``IbConnection`` ready again (ib_async's startup sync done), and to the
  executions made while away recovered by the resync hook's ``fetch_my_trades``
  (``reqExecutions``, as the gateway's reconciliation asks), with their count.

Usage::

    .venv/bin/python bench/ib_gateway.py                  # --trials 30 --reconnects 10 --away 3
    .venv/bin/python bench/ib_gateway.py --trials 100 --json

Orders are spaced ``--gap`` seconds apart (default 0.05: 20 requests a second, under
ib_async's own throttle of 45 a second, so it never waits in it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from services.runtime.clock import Clock
from services.venues.config import VenueConfig

ROOT = Path(__file__).resolve().parents[1]
BINANCE = "binanceusdm"
KEY = "bench-key-0123456789"
STOCK = "AAPL"
WARMUP = 3


Ops = dict[str, Callable[..., dict[str, Any]]]
Served = tuple[dict[str, Any], Ops, Callable[[], Awaitable[None]]]
"""What a fake's process prints when ready, the requests it answers, how it stops."""


def now() -> int:
    return time.monotonic_ns()


# -- the fakes, each in its own process ------------------------------------------------------


async def serve_tws(clock_env: str) -> Served:
    """The TWS fake on the shared exchange clock, noting when it took each order (by
    ``orderRef``), cancelled it, and made each execution."""
    from tests.fakes.clock import ScaledClock
    from tests.fakes.tws.__main__ import venue_toml
    from tests.fakes.tws.server import TwsFake

    fake = TwsFake(ScaledClock.from_env(clock_env))
    await fake.start()
    took: dict[str, int] = {}
    executed: dict[str, tuple[str, int]] = {}
    place, execute = fake.broker.place, fake.executed

    def noted_place(ticket: Any, *args: Any) -> None:
        took.setdefault(ticket.order_ref, now())
        place(ticket, *args)

    def noted_execute(order: Any, execution: Any) -> None:
        executed[execution.exec_id] = (order.ticket.order_ref, now())
        execute(order, execution)

    fake.broker.place = noted_place  # type: ignore[method-assign]
    fake.executed = noted_execute  # type: ignore[method-assign]

    def working(ref: str) -> Any:
        return next(o for o in fake.broker.orders.values() if o.ticket.order_ref == ref)

    def fill(ref: str) -> dict[str, Any]:
        order = working(ref)
        price = fake.price(order.listing)
        execution = fake.broker.execute(order, order.remaining, price, fake.now())
        return {"exec_id": execution.exec_id}

    def away(refs: list[str]) -> dict[str, Any]:
        ids = []
        for ref in refs:
            order = working(ref)
            ids.append(fake.faults.fill_away(order.ticket.client_id, order.ticket.order_id).exec_id)
        at = now()
        fake.faults.drop()
        return {"exec_ids": ids, "dropped": at}

    listing = next(x for x in fake.catalogue if x.symbol == STOCK and x.secType == "STK")
    ops: Ops = {
        "price": lambda: {"price": fake.price(listing)},
        "fill": lambda ref: fill(ref),
        "away": lambda refs: away(refs),
        "notes": lambda: {"took": took, "executed": executed},
        "history": lambda: {
            "orders": len(fake.broker.orders),
            "executions": len(fake.broker.executions),
        },
    }
    venue = tomllib.loads(venue_toml("127.0.0.1", fake.port, fake.account))["venues"][0]
    return {"venue": venue}, ops, fake.stop


async def serve_binance() -> Served:
    """The Binance USDT-M fake on the wall clock, noting when its engine first saw each
    client order id."""
    from tests.fakes.clock import ScaledClock
    from tests.fakes.core import default_symbols, start_fake

    spec = default_symbols(BINANCE, 1)[0]
    fake = await start_fake(BINANCE, [spec], ScaledClock(time.time_ns(), 1.0))
    took: dict[str, int] = {}
    fake.account.on_update(lambda order, fill: took.setdefault(order.client_id, now()))
    ready = {
        "venue": {**fake.venue_entry("bx"), "sandbox": True},
        "secret": fake.api_secret,
        "symbol": spec.symbol,
        "price": spec.price,
        "lot": spec.lot_size,
        "tick": spec.tick_size,
    }
    ops: Ops = {"notes": lambda: {"took": took, "executed": {}}}
    return ready, ops, fake.stop


async def serve(kind: str, clock_env: str) -> None:
    """Print the ready line, then answer one JSON line per request line until stdin ends."""
    ready, ops, stop = await (serve_tws(clock_env) if kind == "tws" else serve_binance())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps(ready), flush=True)
    try:
        while line := await reader.readline():
            request = json.loads(line)
            op = request.pop("op")
            print(json.dumps(ops[op](**request)), flush=True)
    finally:
        await stop()


class Fake:
    """A fake served by ``--serve`` in its own process: ``await fake.ask(op, **args)``."""

    def __init__(self, proc: asyncio.subprocess.Process, ready: dict[str, Any]) -> None:
        self.proc = proc
        self.ready = ready

    @classmethod
    async def start(cls, kind: str, clock_env: str, log: Path) -> Fake:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "--serve", kind, "--clock", clock_env,
            cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=log.open("wb"),
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
        except TimeoutError:
            line = b""
        if not line:
            proc.kill()
            raise SystemExit(f"the {kind} fake did not start: see {log}")
        return cls(proc, json.loads(line))

    async def ask(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        await self.proc.stdin.drain()
        answer: dict[str, Any] = json.loads(await self.proc.stdout.readline())
        return answer

    async def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


# -- the figures -----------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


class Stat(msgspec.Struct, frozen=True):
    name: str
    n: int
    p50_ms: float
    p95_ms: float
    max_ms: float


def stat(name: str, ns: list[int]) -> Stat:
    if not ns:
        return Stat(name, 0, float("nan"), float("nan"), float("nan"))
    ms = [v / 1e6 for v in ns]
    return Stat(name, len(ms), round(statistics.median(ms), 3), round(pct(ms, 95), 3),
                round(max(ms), 3))  # fmt: skip


class Samples:
    """Named lists of durations in ns; the first ``WARMUP`` trials are not kept."""

    def __init__(self) -> None:
        self.values: dict[str, list[int]] = {}
        self.sent: dict[str, list[tuple[str, int]]] = {}
        """New orders' client ids and send times, to split at the fake's notes."""
        self.keep = False

    def add(self, name: str, ns: int) -> None:
        if self.keep:
            self.values.setdefault(name, []).append(ns)

    async def timed(
        self, name: str, call: Awaitable[dict[str, Any]], ref: str = ""
    ) -> dict[str, Any]:
        t0 = now()
        answer: dict[str, Any] = await call
        self.add(name, now() - t0)
        if self.keep and ref:
            self.sent.setdefault(name, []).append((ref, t0))
        return answer

    def split(self, took: dict[str, int]) -> None:
        """Each new order's outbound leg: the call -> the fake took it."""
        for name, sent in self.sent.items():
            legs = [took[ref] - t0 for ref, t0 in sent if ref in took]
            self.values[f"{name}: call -> the fake took it"] = legs

    def stats(self) -> list[Stat]:
        return [stat(name, ns) for name, ns in self.values.items()]


# -- IB --------------------------------------------------------------------------------------


class IbSide:
    """``IbExchange`` as the gateway builds it, with the gateway's two private-stream loops
    running, and hooks that time a reconnect and its recovery."""

    def __init__(self, fake: Fake, clock: Clock, gap_s: float) -> None:
        from services.venues.ib.wiring import ib_exchange

        self.fake = fake
        self.gap_s = gap_s
        self.exchange = ib_exchange(msgspec.convert(fake.ready["venue"], VenueConfig), clock)
        self.samples = Samples()
        self.yielded: dict[str, int] = {}
        self.market_fills: set[str] = set()
        self.resting_fills: set[str] = set()
        self.n = 0
        self.price = 0.0
        self.since_ms = 0
        self.seen_down = 0
        self.up_again = 0
        self.shook = 0
        self.recovered: tuple[int, set[str]] = (0, set())
        self.back = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        ex = self.exchange
        await ex.load_markets()
        ex.ib.disconnectedEvent += self._down
        ex.ib.client.apiStart += self._handshake
        ex.connection.on_connected.insert(0, self._ready)
        ex.on_resync.append(self._resync)
        self.tasks = [asyncio.create_task(self._trades()), asyncio.create_task(self._orders())]
        self.price = (await self.fake.ask("price"))["price"]

    def _down(self) -> None:
        self.seen_down = self.seen_down or now()

    def _handshake(self) -> None:
        self.shook = now()

    def _ready(self, first: bool) -> None:
        self.up_again = now()

    async def _resync(self) -> None:
        trades = await self.exchange.fetch_my_trades(None, self.since_ms)
        self.recovered = (now(), {t["id"] for t in trades})
        self.back.set()

    async def _trades(self) -> None:
        while True:
            for trade in await self.exchange.watch_my_trades():
                if trade["fee"]["cost"] is not None:  # always: IbExchange waits for it
                    self.yielded.setdefault(trade["id"], now())

    async def _orders(self) -> None:
        while True:
            await self.exchange.watch_orders()

    def ref(self) -> str:
        self.n += 1
        return f"bench-{os.getpid()}-{self.n}"

    def far_price(self) -> float:
        return round(self.price * 0.9, 2)

    async def order(self, name: str, kind: str, ref: str) -> None:
        price = self.far_price() if kind == "limit" else None
        call = self.exchange.create_order(STOCK, kind, "buy", 1, price, {"clientOrderId": ref})
        await self.samples.timed(name, call, ref)
        await asyncio.sleep(self.gap_s)

    async def trial(self) -> None:
        """A market order (filled at once), a limit cancelled, a limit the fake then fills."""
        ref = self.ref()
        await self.order("create_order market", "market", ref)
        if self.samples.keep:
            self.market_fills.add(ref)
        ref = self.ref()
        await self.order("create_order limit", "limit", ref)
        cancel = self.exchange.cancel_order(None, STOCK, {"clientOrderId": ref})
        await self.samples.timed("cancel_order", cancel)
        await asyncio.sleep(self.gap_s)
        ref = self.ref()
        await self.order("create_order limit", "limit", ref)
        await self.fake.ask("fill", ref=ref)
        if self.samples.keep:
            self.resting_fills.add(ref)
        await asyncio.sleep(self.gap_s)

    def fills(self, executed: dict[str, list[Any]]) -> list[Stat]:
        """The fake's execution -> the fill yielded by ``watch_my_trades``."""
        out = []
        for kind, refs in (("market", self.market_fills), ("resting", self.resting_fills)):
            ns = [
                self.yielded[e] - at
                for e, (ref, at) in executed.items()
                if ref in refs and e in self.yielded
            ]
            out.append(stat(f"{kind} order: the fake's execution -> watch_my_trades", ns))
        return out

    async def reconnect(self, away: int) -> dict[str, Any]:
        ex = self.exchange
        refs = [self.ref() for _ in range(away)]
        for ref in refs:
            await ex.create_order(
                STOCK, "limit", "buy", 1, self.far_price(), {"clientOrderId": ref}
            )
        self.since_ms = ex.clock.now_ns() // 1_000_000 - 1000
        self.seen_down = self.up_again = self.shook = 0
        self.back.clear()
        history = await self.fake.ask("history")
        told = await self.fake.ask("away", refs=refs)
        await asyncio.wait_for(self.back.wait(), 60)
        got = self.recovered[1] & set(told["exec_ids"])
        await asyncio.sleep(self.gap_s)
        return {
            "down": self.seen_down - told["dropped"],
            "handshake": self.shook - told["dropped"],
            "ready": self.up_again - told["dropped"],
            "recovered": self.recovered[0] - told["dropped"],
            "count": len(got),
            "orders": history["orders"] + away,
            "executions": history["executions"] + away,
        }

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.exchange.close()


# -- ccxt ------------------------------------------------------------------------------------


class CcxtSide:
    """ccxt's ``binanceusdm`` as the gateway builds it, against the Binance USDT-M fake."""

    def __init__(self, fake: Fake, limiter: bool, gap_s: float) -> None:
        from services.venues.ccxt_exchange import build_exchange

        venue = msgspec.convert(fake.ready["venue"], VenueConfig)
        self.exchange = build_exchange(venue, {"apiKey": KEY, "secret": fake.ready["secret"]})
        self.exchange.enableRateLimit = limiter
        self.label = f"ccxt {BINANCE}, rate limiter {'on' if limiter else 'off'}"
        self.gap_s = gap_s
        self.symbol: str = fake.ready["symbol"]
        lot, tick = fake.ready["lot"], fake.ready["tick"]
        self.qty = round(max(lot, round(120.0 / fake.ready["price"] / lot) * lot), 8)
        self.far = round(round(fake.ready["price"] * 0.95 / tick) * tick, 8)
        self.samples = Samples()
        self.n = 0
        self.side = "buy"

    async def start(self) -> None:
        await self.exchange.load_markets()

    def ref(self) -> str:
        self.n += 1
        return f"b{os.getpid()}x{int(self.exchange.enableRateLimit)}n{self.n}"

    async def trial(self) -> None:
        """A market order (alternating sides, so the position stays small), a limit
        cancelled."""
        ex = self.exchange
        ref = self.ref()
        call = ex.create_order(self.symbol, "market", self.side, self.qty, None,
                               {"clientOrderId": ref})  # fmt: skip
        await self.samples.timed("create_order market", call, ref)
        await asyncio.sleep(self.gap_s)
        self.side = "sell" if self.side == "buy" else "buy"
        ref = self.ref()
        call = ex.create_order(self.symbol, "limit", "buy", self.qty, self.far,
                               {"clientOrderId": ref})  # fmt: skip
        placed = await self.samples.timed("create_order limit", call, ref)
        await asyncio.sleep(self.gap_s)
        await self.samples.timed("cancel_order", ex.cancel_order(placed["id"], self.symbol))
        await asyncio.sleep(self.gap_s)

    async def close(self) -> None:
        await self.exchange.close()


# -- one run ---------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.fakes.clock import ScaledClock
    from tests.ib_session import exchange_start

    # a warning per drop (Keel) and an error per cancel (202) and drop (ib_async): expected here
    logging.getLogger("keel.ib").setLevel(logging.ERROR)
    logging.getLogger("ib_async").setLevel(logging.CRITICAL)
    clock = ScaledClock(exchange_start(), 1.0)
    work = Path(tempfile.mkdtemp(prefix="keel-ib-bench-"))
    tws = await Fake.start("tws", clock.to_env(), work / "tws.log")
    binance = await Fake.start("binance", clock.to_env(), work / "binance.log")
    ib = IbSide(tws, clock, args.gap)
    sides = [CcxtSide(binance, False, args.gap), CcxtSide(binance, True, args.gap)]
    fresh: list[dict[str, Any]] = []
    busy: list[dict[str, Any]] = []
    try:
        t0 = now()
        await ib.start()
        connect_ms = (now() - t0) / 1e6
        for side in sides:
            await side.start()
        for _ in range(args.reconnects):
            fresh.append(await ib.reconnect(args.away))
        for i in range(WARMUP + args.trials):
            for sampled in (ib, *sides):
                sampled.samples.keep = i >= WARMUP
            await ib.trial()
            for side in sides:
                await side.trial()
            if i % 10 == 9:
                print(f"{i + 1} trials", file=sys.stderr)
        for _ in range(args.reconnects):
            busy.append(await ib.reconnect(args.away))
        await asyncio.sleep(0.5)  # the last fills' reports
        tws_notes = await tws.ask("notes")
        bx_notes = await binance.ask("notes")
    finally:
        await ib.close()
        for side in sides:
            await side.close()
        await tws.stop()
        await binance.stop()
    ib.samples.split(tws_notes["took"])
    for side in sides:
        side.samples.split(bx_notes["took"])
    fills = [msgspec.to_builtins(s) for s in ib.fills(tws_notes["executed"])]
    return {
        "trials": args.trials,
        "connect_ms": round(connect_ms, 1),
        "ib": [msgspec.to_builtins(s) for s in ib.samples.stats()],
        "ib_fills": fills,
        "fills": {
            "executions": sum(
                ref in ib.market_fills | ib.resting_fills
                for ref, _ in tws_notes["executed"].values()
            ),
            "yielded_with_fee": sum(s["n"] for s in fills),
        },
        "ccxt": {s.label: [msgspec.to_builtins(x) for x in s.samples.stats()] for s in sides},
        "reconnect": [reconnect_stats(fresh, args.away), reconnect_stats(busy, args.away)],
        "work": str(work),
    }


def reconnect_stats(trials: list[dict[str, Any]], away: int) -> dict[str, Any]:
    """The startup sync asks for every order and execution of the day: the session's history
    at the drop is given with the times."""
    return {
        "trials": len(trials),
        "away_per_trial": away,
        "recovered": [t["count"] for t in trials],
        "orders": [min(t["orders"] for t in trials), max(t["orders"] for t in trials)],
        "executions": [min(t["executions"] for t in trials), max(t["executions"] for t in trials)],
        "stages": [
            msgspec.to_builtins(stat(name, [t[key] for t in trials]))
            for name, key in (
                ("drop -> ib_async sees the disconnect", "down"),
                ("drop -> handshake done (apiStart), startup sync begins", "handshake"),
                ("drop -> IbConnection ready again", "ready"),
                ("drop -> executions made while away recovered (reqExecutions)", "recovered"),
            )
        ],
    }


def ratios(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """IB's p50 over ccxt's, per call, against each ccxt run."""
    ib = {s["name"]: s["p50_ms"] for s in result["ib"]}
    out: dict[str, dict[str, float]] = {}
    for label, rows in result["ccxt"].items():
        for row in rows:
            if row["name"] in ib and row["p50_ms"] > 0:
                out.setdefault(row["name"], {})[label] = round(ib[row["name"]] / row["p50_ms"], 3)
    return out


def print_table(result: dict[str, Any]) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"# {platform.node()} {os.cpu_count()} cpus, python {platform.python_version()}, "
        f"load {load}; {result['trials']} trials after {WARMUP} of warm-up"
    )
    print(f"\nIbExchange.load_markets (connect, sync, qualify AAPL and ES): "
          f"{result['connect_ms']} ms")  # fmt: skip
    head = "| {} | n | p50 ms | p95 ms | max ms |\n|---|---:|---:|---:|---:|"
    print("\n" + head.format("IB: IbExchange -> ib_async -> TWS fake"))
    for s in result["ib"] + result["ib_fills"]:
        print(f"| {s['name']} | {s['n']} | {s['p50_ms']} | {s['p95_ms']} | {s['max_ms']} |")
    fills = result["fills"]
    print(
        f"\nmeasured executions: {fills['executions']}, yielded by watch_my_trades with their "
        f"commission report: {fills['yielded_with_fee']}"
    )
    for label, rows in result["ccxt"].items():
        print("\n" + head.format(f"{label} -> Binance USDT-M fake"))
        for s in rows:
            print(f"| {s['name']} | {s['n']} | {s['p50_ms']} | {s['p95_ms']} | {s['max_ms']} |")
    print("\n| IB p50 / ccxt p50 | " + " | ".join(result["ccxt"]) + " |")
    print("|---|" + "---:|" * len(result["ccxt"]))
    for name, by in result["ratios"].items():
        print(f"| {name} | " + " | ".join(str(by.get(k, "")) for k in result["ccxt"]) + " |")
    for rc in result["reconnect"]:
        title = (
            f"IB reconnect: {rc['trials']} drops, {rc['away_per_trial']} executions away each; "
            f"the account held {rc['orders'][0]}-{rc['orders'][1]} orders and "
            f"{rc['executions'][0]}-{rc['executions'][1]} executions"
        )
        print("\n" + head.format(title))
        for s in rc["stages"]:
            print(f"| {s['name']} | {s['n']} | {s['p50_ms']} | {s['p95_ms']} | {s['max_ms']} |")
        print(f"\nexecutions recovered per drop: {rc['recovered']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30, help="measured trials per client")
    parser.add_argument(
        "--reconnects", type=int, default=10, help="IB drops to time, before and after the trials"
    )
    parser.add_argument("--away", type=int, default=3, help="executions made while away, per drop")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between requests")
    parser.add_argument("--json", action="store_true", help="the last line is one JSON object")
    parser.add_argument("--keep", action="store_true", help="keep the fakes' logs")
    parser.add_argument("--serve", choices=("tws", "binance"), help=argparse.SUPPRESS)
    parser.add_argument("--clock", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.serve, args.clock))
        return
    result = asyncio.run(run(args))
    result["ratios"] = ratios(result)
    result["load"] = list(os.getloadavg())
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    if any(n != args.away for rc in result["reconnect"] for n in rc["recovered"]):
        raise SystemExit("an execution made while away was not recovered")
    if result["fills"]["executions"] != result["fills"]["yielded_with_fee"]:
        raise SystemExit("an execution did not reach watch_my_trades")
    if not args.keep:
        shutil.rmtree(result["work"], ignore_errors=True)


if __name__ == "__main__":
    main()
