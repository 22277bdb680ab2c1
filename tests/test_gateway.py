"""The venue gateway against the exchange fakes, on a real nats-server (in process; the
crash tests with a real process and ``kill -9`` are ``tests/test_gateway_crash.py``).

Exchange time runs ten times faster than the wall (``ScaledClock``); the fakes' account
faults make every ambiguous case happen on purpose: an answer that never comes (the order
was placed, or was not), an order the exchange shows late, a silent private stream, a
position changed behind Keel's back. What the gateway stores is read back from the log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import ccxt.pro
import msgspec
import pytest
from nats.js.api import DeliverPolicy

from contracts.envelope import Envelope
from contracts.venue_events import (
    Discrepancy,
    KillSwitch,
    VenueAdoption,
    VenueAnswer,
    VenueOrder,
    VenueStatus,
)
from eventstore.bus import Bus
from eventstore.errors import KeelError
from eventstore.log_reader import read_caught_up
from eventstore.server import URL_ENV, EmbeddedServer
from services.venues.ccxt_exchange import build_exchange
from services.venues.client_ids import venue_client_id
from services.venues.config import VenueConfig
from services.venues.gateway.config import GatewayConfig
from services.venues.gateway.worker import Gateway
from tests.fakes.clock import ScaledClock
from tests.fakes.core import FakeExchange, start_fake
from tests.fakes.matching import FakeFill
from tests.fakes.prices import default_symbols
from tests.gateway_harness import GatewayHarness, secret_for
from tests.gateway_process import write_config

EXCHANGES = ["binance", "binanceusdm", "bybit", "kraken", "krakenfutures"]
RATE = 10.0
TINY = {  # the exchange's own words for an order below its minimum notional
    "binance": "BadRequest -1013: Filter failure: NOTIONAL",
    "binanceusdm": "ExchangeError -4164: Order's notional must be no smaller than 5",
    "bybit": "InvalidOrder 170140: Order value exceeded lower limit",
}
POOR = {  # the exchange's own words for insufficient funds
    "binance": "InsufficientFunds: Account has insufficient balance",
    "binanceusdm": "ExchangeError -2019: Margin is insufficient",
    "bybit": "InsufficientFunds 170131: Insufficient balance",
    "kraken": "InsufficientFunds: EOrder:Insufficient funds",
    "krakenfutures": "InsufficientFunds: krakenfutures: createOrder failed due to insufficientAvailableFunds",
}
VENUE = "gx"
KEY = "gateway-test-key-0123456789"
CONFIG = GatewayConfig(
    poll_after_s=20.0,
    poll_every_s=1.0,
    reconcile_every_s=30.0,
    unknown_queries=3,
    unknown_within_s=6.0,
    unknown_then="fail",
)


def fast_exchange(venue: VenueConfig, secrets: Mapping[str, str]) -> ccxt.pro.Exchange:
    exchange = build_exchange(venue, secrets)
    exchange.rateLimit = min(exchange.rateLimit, 20)
    exchange.tokenBucket = {**exchange.tokenBucket, "refillRate": 1 / 20, "rateLimit": 20}
    exchange.init_throttler()
    return exchange


class Harness(GatewayHarness):
    def __init__(self, bus: Bus, fake: FakeExchange, clock: ScaledClock, work: Path) -> None:
        entry = {
            **fake.venue_entry(VENUE),
            "timeout_ms": 1500,
            "credentials": {"api_key_env": "KEEL_TEST_KEY", "secret_env": "KEEL_TEST_SECRET"},
        }
        super().__init__(bus, msgspec.convert(entry, VenueConfig), clock, work)
        self.fake = fake
        self.symbol = next(iter(fake.specs))

    async def start(self, config: GatewayConfig = CONFIG) -> Gateway:
        return await self._run(
            Gateway(
                self.bus,
                self.venue,
                config,
                self.clock,
                exchange_factory=fast_exchange,
                work_dir=self.work,
            )
        )

    async def send(self, **fields: object) -> VenueOrder:
        return await self._send(self.symbol, 0.01, fields, {})

    def exchange_orders(self, vcid: str) -> list:
        return [o for o in self.fake.account.orders(include_hidden=True) if o.client_id == vcid]


@pytest.fixture
async def harness(
    bus: Bus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[Harness]:
    exchange_id = getattr(request, "param", "binance")
    clock = ScaledClock(time.time_ns() - 3 * 3600 * 1_000_000_000, RATE)
    fake = await start_fake(exchange_id, default_symbols(exchange_id, 1), clock)
    monkeypatch.setenv("KEEL_TEST_KEY", KEY)
    monkeypatch.setenv("KEEL_TEST_SECRET", secret_for(fake))
    h = Harness(bus, fake, clock, tmp_path / "work")
    try:
        yield h
    finally:
        if h.task is not None and not h.task.done():
            await h.stop(hard=True)
        await fake.stop()


def fill(a: VenueAnswer) -> bool:
    return a.kind == "fill"


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("harness", EXCHANGES, indirect=True)
async def test_submit_ack_and_fills_from_the_private_stream(harness: Harness) -> None:
    await harness.start()
    # Frames before the private subscription is in place are the poll's and reconciliation's.
    await until(lambda: _connected(harness), "the private stream's connection")
    await asyncio.sleep(0.5)
    order = await harness.send(qty=0.01)
    vcid = order.venue_client_id
    accepted = await harness.answer(vcid, lambda a: a.kind == "accepted", "the acknowledgement")
    got = await harness.answer(vcid, fill, "the fill")
    assert len(harness.exchange_orders(vcid)) == 1
    assert accepted.venue_order_id and accepted.venue_order_id == got.venue_order_id
    assert got.source in ("stream", "submit")
    await until(lambda: _filled(harness, vcid, order.qty), "every fill of the order")
    fills = [f for f in harness.fake.account.fills() if f.client_id == vcid]
    mine = [a for a in await harness.answers(vcid) if a.kind == "fill"]
    assert len({a.trade_id for a in mine}) == len(mine) == len(fills)
    for a, f in zip(sorted(mine, key=_key), sorted(fills, key=_key), strict=True):
        assert (a.fill_qty, a.fill_price, a.fee) == pytest.approx((f.qty, f.price, f.fee))
    assert {a.fee_currency for a in mine} == {f.fee_currency for f in fills}
    await harness.stop()


async def _connected(harness: Harness) -> bool:
    return bool(harness.fake.connections)


def _key(fill: VenueAnswer | FakeFill) -> tuple[float, float]:
    if isinstance(fill, VenueAnswer):
        return (fill.fill_qty, fill.fill_price)
    return (fill.qty, fill.price)


async def _filled(harness: Harness, vcid: str, qty: float) -> bool:
    fills = [a.fill_qty for a in await harness.answers(vcid) if a.kind == "fill"]
    return sum(fills) >= qty * (1 - 1e-9)


@pytest.mark.parametrize("harness", EXCHANGES, indirect=True)
async def test_rejections_carry_the_exchanges_reason(harness: Harness) -> None:
    await harness.start()
    poor = await harness.send(qty=1_000_000.0)
    rejected = await harness.answer(poor.venue_client_id, lambda a: a.kind == "rejected", "refusal")
    assert rejected.reason.startswith(POOR[harness.fake.exchange_id]), rejected.reason
    assert not harness.exchange_orders(poor.venue_client_id)
    words = TINY.get(harness.fake.exchange_id)
    if words is not None:  # Kraken's fakes have no minimum notional
        tiny = await harness.send(order_type="limit", limit_price=1.0, qty=0.001)  # notional 0.001
        refused = await harness.answer(tiny.venue_client_id, lambda a: a.kind == "rejected", "no")
        assert refused.reason.startswith(words), refused.reason
    await harness.stop()


@pytest.mark.parametrize("harness", EXCHANGES, indirect=True)
async def test_unknown_submit_is_settled_by_a_query(harness: Harness) -> None:
    await harness.start()
    harness.fake.account.faults.silent_user_stream = True  # only a query can tell
    harness.fake.account.faults.hang_next = 1  # placed, then the connection closes unanswered
    order = await harness.send(order_type="limit", limit_price=1.0, qty=10.0)
    vcid = order.venue_client_id
    unknown = await harness.answer(vcid, lambda a: a.kind == "unknown", "unknown")
    assert unknown.source == "submit"
    found = await harness.answer(
        vcid, lambda a: a.kind == "accepted" and a.source == "query", "the query's answer"
    )
    assert found.venue_order_id
    assert not [a for a in await harness.answers(vcid) if a.kind in ("rejected", "canceled")]
    assert len(harness.exchange_orders(vcid)) == 1
    await harness.stop()


async def test_an_order_the_exchange_never_got_is_missing_after_the_fate_rule(
    harness: Harness,
) -> None:
    await harness.start()
    harness.fake.account.faults.drop_next = 1  # not acted on, never answered
    order = await harness.send(order_type="limit", limit_price=1.0, qty=10.0)
    vcid = order.venue_client_id
    missing = await harness.answer(vcid, lambda a: a.kind == "missing", "the fate rule", 30)
    misses = [a for a in await harness.answers(vcid) if a.kind == "unknown" and a.source == "query"]
    assert len(misses) >= CONFIG.unknown_queries
    assert (misses[-1].ts - misses[0].ts) / 1e9 >= CONFIG.unknown_within_s * 0.5
    assert missing.reason and not harness.exchange_orders(vcid)
    await harness.stop()


async def test_resubmit_rule_places_the_same_client_id_once(harness: Harness) -> None:
    await harness.start(msgspec.structs.replace(CONFIG, unknown_then="resubmit"))
    harness.fake.account.faults.drop_next = 1
    order = await harness.send(order_type="limit", limit_price=1.0, qty=10.0)
    vcid = order.venue_client_id
    await harness.answer(vcid, lambda a: a.kind == "accepted", "the resubmitted order", 30)
    assert len(harness.exchange_orders(vcid)) == 1
    await harness.stop()


@pytest.mark.parametrize("harness", EXCHANGES, indirect=True)
async def test_a_silent_stream_hands_over_to_polling(harness: Harness) -> None:
    await harness.start()
    harness.fake.account.faults.silent_user_stream = True
    price = harness.fake.snapshot(harness.symbol).bid
    order = await harness.send(order_type="limit", limit_price=round(price * 0.999, 2), qty=0.1)
    vcid = order.venue_client_id
    await harness.answer(vcid, lambda a: a.kind == "accepted", "the acknowledgement")
    placed = harness.exchange_orders(vcid)[0]
    harness.fake.account.faults.fill_silently(placed.order_id)
    filled_at = harness.clock.now_ns()
    got = await harness.answer(vcid, fill, "a polled fill", 30)
    assert got.source in ("poll", "query")
    bound = CONFIG.poll_after_s + 2 * CONFIG.poll_every_s
    assert (got.ts - filled_at) / 1e9 <= bound * 3  # loose on a busy machine
    await harness.stop()


@pytest.mark.parametrize("harness", EXCHANGES, indirect=True)
async def test_a_restart_never_sends_an_order_again(harness: Harness) -> None:
    await harness.start()
    harness.fake.account.faults.ack_delay_s = 2.0  # the answer comes late: we crash first
    order = await harness.send(order_type="limit", limit_price=1.0, qty=10.0)
    vcid = order.venue_client_id
    await until(lambda: _placed(harness, vcid), "the exchange to take the order")
    await harness.stop(hard=True)
    harness.fake.account.faults.ack_delay_s = 0.0
    await harness.start()
    await harness.answer(vcid, lambda a: a.kind == "accepted", "the order found")
    await asyncio.sleep(1.0)
    assert len(harness.exchange_orders(vcid)) == 1
    assert not [a for a in await harness.answers(vcid) if a.kind in ("rejected", "missing")]
    await harness.stop()


async def _placed(harness: Harness, vcid: str) -> bool:
    return bool(harness.exchange_orders(vcid))


async def test_a_mismatch_halts_and_an_adoption_lifts_it(harness: Harness) -> None:
    gateway = await harness.start(msgspec.structs.replace(CONFIG, reconcile_every_s=2.0))
    base = harness.fake.specs[harness.symbol].base
    harness.fake.account.faults.set_balance(base, 0.5)
    await until(lambda: _state(harness, "halted"), "the halt", 30)
    assert gateway.state == "halted"
    found = await harness.events(Discrepancy, f"venue.recon.{VENUE}")
    assert any(d.kind == "balance_mismatch" and d.asset == base for d in found)
    order = await harness.send(qty=0.01)
    refused = await harness.answer(order.venue_client_id, lambda a: a.kind == "rejected", "refusal")
    assert refused.reason.startswith("venue halted")
    adoption = VenueAdoption(ts=harness.clock.now_ns(), venue=VENUE, reason="checked by hand")
    await harness.bus.publish(adoption, Envelope.root("adopt-1", adoption.ts))
    await until(lambda: _state(harness, "running", after="halted"), "the halt lifted", 30)
    await harness.stop()


async def _state(harness: Harness, state: str, after: str = "") -> bool:
    statuses = await harness.events(VenueStatus, f"venue.status.{VENUE}")
    states = [s.state for s in statuses]
    if after:
        return after in states and state in states[states.index(after) + 1 :]
    return bool(states) and states[-1] == state


async def test_one_gateway_per_api_key(harness: Harness) -> None:
    await harness.start()
    second = Gateway(
        harness.bus,
        harness.venue,
        CONFIG,
        harness.clock,
        exchange_factory=fast_exchange,
        work_dir=harness.work,
    )
    with pytest.raises(KeelError, match="in use by another gateway"):
        await second.run()
    await harness.stop()


async def test_credentials_stay_out_of_logs_and_events(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await harness.start()
    secret = secret_for(harness.fake)
    harness.fake.api_secret = "another-secret"  # every signed call now fails
    order = await harness.send(qty=0.01)
    await harness.answer(
        order.venue_client_id, lambda a: a.kind in ("unknown", "rejected"), "an answer"
    )
    await harness.stop()
    found = await read_caught_up(harness.bus, "VENUE", "venue.>", DeliverPolicy.ALL)
    stored = b"".join(msgspec.json.encode(s.event) for s in found)
    assert stored and KEY.encode() not in stored and secret.encode() not in stored
    assert caplog.text and KEY not in caplog.text and secret not in caplog.text


@pytest.mark.parametrize("harness", ["binanceusdm"], indirect=True)
async def test_perpetual_stop_goes_to_the_algo_endpoint_and_the_kill_switch_is_not_its_own(
    harness: Harness,
) -> None:
    await harness.start()
    entry = await harness.send(qty=0.01)
    await harness.answer(entry.venue_client_id, fill, "the entry's fill")
    last = harness.fake.snapshot(harness.symbol).bid
    stop = await harness.send(
        order_type="stop",
        stop_price=round(last * 0.5, 1),
        side="sell",
        qty=0.01,
        reduce_only=True,
        protective=True,
    )
    await harness.answer(stop.venue_client_id, lambda a: a.kind == "accepted", "the stop")
    placed = harness.exchange_orders(stop.venue_client_id)
    assert len(placed) == 1 and placed[0].algo and placed[0].reduce_only
    assert harness.fake.requests["/fapi/v1/algoOrder"] >= 1
    # The kill switch is the order manager's (it knows entries from protective legs): a
    # gateway leaves it alone, so the position and the stop stay as they are.
    kill = KillSwitch(ts=harness.clock.now_ns(), reason="test", flatten=True)
    await harness.bus.publish(kill, Envelope.root("kill-2", kill.ts))
    await harness.clock.sleep(5.0)
    position = harness.fake.account.positions.get(harness.symbol)
    assert position is not None and position.qty > 0 and placed[0].is_open
    await harness.stop()


@pytest.mark.parametrize("harness", ["binance", "binanceusdm", "bybit"], indirect=True)
async def test_cancel_and_amend_keep_a_stop_on_the_exchange(harness: Harness) -> None:
    await harness.start()
    bid = harness.fake.snapshot(harness.symbol).bid
    entry = await harness.send(order_type="limit", limit_price=round(bid * 0.5, 2), qty=0.01)
    stop = await harness.send(
        client_order_id="stop1",
        order_type="stop",
        stop_price=round(bid * 0.6, 2),
        side="sell",
        qty=0.01,
        protective=True,
    )
    for leg in (entry, stop):
        await harness.answer(leg.venue_client_id, lambda a: a.kind == "accepted", "accepted")
    # A trailing stop moves. On a perpetual and on Bybit (a conditional order holds nothing
    # until it triggers) the new leg is placed before the old one is canceled; on Binance
    # spot the old one holds the base, so it goes first (tests/test_gateway_amend.py).
    moved = await harness.send(
        action="amend",
        client_order_id="stop1",
        venue_client_id=venue_client_id(VENUE, "stop1", 1),
        replaces=stop.venue_client_id,
        order_type="stop",
        stop_price=round(bid * 0.7, 2),
        side="sell",
        qty=0.01,
        protective=True,
    )
    await harness.answer(moved.venue_client_id, lambda a: a.kind == "accepted", "the new stop")
    await harness.answer(stop.venue_client_id, lambda a: a.kind == "canceled", "the old stop")
    old, new = (
        harness.exchange_orders(stop.venue_client_id)[0],
        harness.exchange_orders(moved.venue_client_id)[0],
    )
    if harness.fake.exchange_id in ("binanceusdm", "bybit"):
        assert new.created_ns <= old.updated_ns
    else:
        assert old.updated_ns <= new.created_ns
    assert new.is_open and not old.is_open
    # An entry moves: the old one is canceled first (never two live entries).
    amended = await harness.send(
        action="amend",
        client_order_id="o1",
        venue_client_id=venue_client_id(VENUE, "o1", 1),
        replaces=entry.venue_client_id,
        order_type="limit",
        limit_price=round(bid * 0.55, 2),
        qty=0.01,
    )
    await harness.answer(amended.venue_client_id, lambda a: a.kind == "accepted", "the new entry")
    gone = harness.exchange_orders(entry.venue_client_id)[0]
    assert gone.status == "canceled"
    assert gone.updated_ns <= harness.exchange_orders(amended.venue_client_id)[0].created_ns
    # A plain cancel, then a cancel of a leg that is over: refused by Keel with why.
    cancel = msgspec.structs.replace(amended, action="cancel", replaces="")
    for _ in range(2):
        await harness.send(**_fields(cancel))
    await harness.answer(amended.venue_client_id, lambda a: a.kind == "canceled", "the cancel")
    refused = await harness.answer(
        amended.venue_client_id, lambda a: a.kind == "rejected" and a.source == "cancel", "no"
    )
    assert "no open order" in refused.reason
    await harness.stop()


def _fields(order: VenueOrder) -> dict[str, object]:
    keep = (
        "action",
        "client_order_id",
        "venue_client_id",
        "side",
        "qty",
        "order_type",
        "limit_price",
        "stop_price",
        "protective",
        "replaces",
    )
    return {k: getattr(order, k) for k in keep}


@pytest.mark.parametrize("harness", ["binanceusdm", "krakenfutures"], indirect=True)
async def test_a_crash_between_partial_fills_applies_each_fill_once(harness: Harness) -> None:
    await harness.start()
    harness.fake.account.faults.fill_parts = 4
    order = await harness.send(qty=0.04)
    vcid = order.venue_client_id
    await harness.answer(vcid, fill, "the first fill")
    await harness.stop(hard=True)  # the other parts fill while nobody listens
    await until(lambda: _fake_filled(harness, vcid), "the exchange to fill the rest")
    await harness.start()
    await until(lambda: _filled(harness, vcid, order.qty), "every fill after the restart", 40)
    fills = [a for a in await harness.answers(vcid) if a.kind == "fill"]
    assert len(fills) == len({a.trade_id for a in fills}) == 4
    assert len(harness.exchange_orders(vcid)) == 1
    gateway = harness.gateway
    assert gateway is not None and gateway.journal.position(harness.symbol) == pytest.approx(0.04)
    found = await harness.events(Discrepancy, f"venue.recon.{VENUE}")
    assert gateway.state == "running", [(d.kind, d.action, d.detail) for d in found]
    await harness.stop()


async def _fake_filled(harness: Harness, vcid: str) -> bool:
    return harness.exchange_orders(vcid)[0].status == "filled"


async def test_orders_stored_while_the_gateway_was_down_are_sent_once(harness: Harness) -> None:
    await harness.start()
    await harness.stop()
    order = await harness.send(order_type="limit", limit_price=1.0, qty=10.0)
    await harness.start()
    vcid = order.venue_client_id
    accepted = await harness.answer(vcid, lambda a: a.kind == "accepted", "the order sent")
    assert accepted.source in ("submit", "stream")
    assert not [a for a in await harness.answers(vcid) if a.kind in ("unknown", "missing")]
    assert len(harness.exchange_orders(vcid)) == 1
    await harness.stop()


async def test_the_command_refuses_a_second_gateway_in_one_line(
    harness: Harness, nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    cwd = tmp_path / "cli"
    cwd.mkdir()
    harness.work = cwd / ".keel"  # where `keel run gateway` in cwd takes its lock
    await harness.start()
    config = write_config(cwd / "keel.json", harness.fake, VENUE, CONFIG)
    args = ["run", "gateway", "--venue", VENUE, "--config", str(config)]
    if harness.venue.mode == "live":
        args.append("--live")
    second = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.app", *args, cwd=cwd,
        env={**os.environ, URL_ENV: nats_server.url, "COLUMNS": "300"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(second.communicate(), 60)
    lines = err.decode().strip().splitlines()
    assert second.returncode != 0 and len(lines) == 1, err.decode()
    assert "in use by another gateway" in lines[0] and KEY not in lines[0]
    await harness.stop()


async def test_rate_limits_are_waited_out_with_the_same_client_id(harness: Harness) -> None:
    gateway = await harness.start()
    harness.fake.faults.http_errors.extend([429, 429, 429])  # the next three requests
    order = await harness.send(order_type="limit", limit_price=1.0, qty=10.0)
    vcid = order.venue_client_id
    await harness.answer(vcid, lambda a: a.kind == "accepted", "the order after the backoff")
    assert gateway.dealer.calls.backoffs >= 1
    assert len(harness.exchange_orders(vcid)) == 1
    assert not [a for a in await harness.answers(vcid) if a.kind in ("rejected", "unknown")]
    await harness.stop()
