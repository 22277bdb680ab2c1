"""``keel publish ext`` against a real nats-server, and a live strategy worker reacting to
what it publishes."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

from contracts.envelope import bar_envelope, external_envelope
from contracts.events import Event, ListingAnnouncement, Signal, SocialSentiment
from eventstore.bus import Bus, Stored
from eventstore.lag import wait_drained
from eventstore.server import EmbeddedServer
from services.runtime.worker import Worker, WorkerOptions
from services.strategy.host import strategy_role
from strategies.registry import build_strategy
from tests.conftest import keel
from tests.external_scenario import T0, bar
from tests.factories import MINUTE

LISTING = {
    "kind": "listing",
    "venue": "binance",
    "symbol": "NEW/USDT",
    "listing_time": "2023-11-14T22:14:00Z",
    "title": "Binance will list NEW",
}


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def one_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    both = result.stdout + result.stderr
    assert result.returncode == 2, both
    assert "Traceback" not in both
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert needle in lines[0], lines[0]


async def stored(bus: Bus, subject: str, stream: str) -> list[Stored]:
    return [i async for i in bus.read(subject, stream) if isinstance(i, Stored)]


async def test_publish_stores_once_with_a_content_id(nats_server: EmbeddedServer, bus: Bus) -> None:
    url = nats_server.url
    first = ok(keel(url, "publish", "ext", "news", "--json", json.dumps(LISTING)))
    assert first.startswith("stored: ext.listing.news.NEW-USDT id ")
    # stamped with another "now", the same announcement: the same id, not stored again
    again = ok(keel(url, "publish", "ext", "news", "--json", json.dumps(LISTING)))
    assert again.startswith("already stored (duplicate): ext.listing.news.NEW-USDT")
    items = await stored(bus, "ext.>", "EXTERNAL")
    assert len(items) == 1
    event = items[0].event
    assert isinstance(event, ListingAnnouncement)
    assert (event.source, event.symbol, event.listing_time) == ("news", "NEW/USDT", T0)
    assert items[0].envelope.event_id == external_envelope(event).event_id
    assert items[0].envelope.event_time == event.ts


async def test_jetstream_drops_a_resent_event_that_is_not_the_last_on_its_subject(
    nats_server: EmbeddedServer, bus: Bus
) -> None:
    url = nats_server.url
    reading = {"kind": "sentiment", "symbol": "DOGE/USDT", "score": 0.9, "ts": 5}
    later = {**reading, "ts": 6}
    ok(keel(url, "publish", "ext", "x", "--json", json.dumps(reading)))
    ok(keel(url, "publish", "ext", "x", "--json", json.dumps(later)))
    out = ok(keel(url, "publish", "ext", "x", "--json", json.dumps(reading)))
    assert out.startswith("already stored (duplicate): ext.sentiment.x.DOGE-USDT")
    items = await stored(bus, "ext.sentiment.>", "EXTERNAL")
    ids = [
        external_envelope(SocialSentiment(ts=ts, source="x", symbol="DOGE/USDT", score=0.9))
        for ts in (5, 6)
    ]
    assert [(i.event.ts, i.envelope.event_id) for i in items] == [
        (5, ids[0].event_id),
        (6, ids[1].event_id),
    ]


@pytest.mark.parametrize(
    ("source", "text", "needle"),
    [
        ("news", "{oops", "--json is not valid JSON"),
        ("news", "[1, 2]", "must be a JSON object"),
        ("news", '{"kind": "rumour"}', 'needs "kind"'),
        ("news", '{"kind": "sentiment", "symbol": "A", "score": "high"}', "$.score"),
        ("news", '{"kind": "sentiment", "symbol": "A", "score": 3}', "score must be within"),
        ("news", '{"kind": "sentiment", "symbl": "A", "score": 0.1}', "unknown field(s) symbl"),
        ("news", '{"kind": "promo", "venue": "binance"}', "give a title or a text"),
        ("news", '{"kind": "listing", "venue": "b", "symbol": "X", "ts": "soon"}', "ts: time"),
        ("bad.source", '{"kind": "sentiment", "symbol": "A", "score": 0.1}', "source"),
    ],
)
def test_bad_input_is_one_line_before_any_connection(source: str, text: str, needle: str) -> None:
    # nothing listens there: the input is refused before the command tries to connect
    one_error(keel("nats://127.0.0.1:1", "publish", "ext", source, "--json", text), needle)


async def test_nothing_stored_after_bad_input(nats_server: EmbeddedServer, bus: Bus) -> None:
    keel(nats_server.url, "publish", "ext", "news", "--json", '{"kind": "listing"}')
    assert await stored(bus, "ext.>", "EXTERNAL") == []


async def test_a_live_strategy_worker_reacts_to_a_published_listing(
    nats_server: EmbeddedServer, bus: Bus
) -> None:
    params = {"notional": 100, "delay_s": 0, "take_profits": "10"}
    worker = Worker(
        strategy_role(build_strategy("listing_sniper", params, "sniper"), ["NEW/USDT"]),
        WorkerOptions(metrics_port=None, heartbeat_s=0.5),
    )
    own = await Bus.connect(nats_server.url, name=worker.name)
    task = asyncio.create_task(worker.run(own))
    names = {"strategy-sniper-market", "strategy-sniper-external"}
    try:
        assert await wait_drained(bus, names, timeout=20)
        for b in (bar(9.0, index=0), bar(9.5, index=1)):  # before the listing time
            await bus.publish(b, bar_envelope(b))
        listing = {**LISTING, "listing_time": T0 + 2 * MINUTE}
        ok(keel(nats_server.url, "publish", "ext", "news", "--json", json.dumps(listing)))
        assert await wait_drained(bus, names, timeout=20)
        for b in (bar(10.0, index=2), bar(10.5, index=3), bar(11.5, index=4, high=11.5)):
            await bus.publish(b, bar_envelope(b))
        assert await wait_drained(bus, names, timeout=20)
        signals: list[Event] = [i.event for i in await stored(bus, "sig.>", "SIGNALS")]
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
        await own.close()
    assert all(isinstance(s, Signal) for s in signals)
    assert [(s.ts, s.target_position, s.model_tag) for s in signals] == [
        (T0 + 3 * MINUTE, 10.0, "listing_sniper-d0-stop10-tp10"),
        (T0 + 5 * MINUTE, 0.0, "listing_sniper-d0-stop10-tp10"),
    ]
    assert [i async for i in bus.read("sys.dlq.>", "SYSTEM")] == []
