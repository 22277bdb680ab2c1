"""External events in backtests: the JSONL reader, the merge with the bars (ties: bars
first), and ``keel backtest --events`` giving the same result hash every time."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pyarrow.parquet as pq
import pytest

from contracts.codec import decode, encode
from contracts.envelope import external_envelope
from contracts.events import Bar, ListingAnnouncement, Signal, SocialSentiment
from eventstore.errors import KeelError
from eventstore.server import EmbeddedServer
from replay.backtest import BacktestSpec, load_run, run_backtest
from replay.bus_replay import bus_replay
from replay.external import EventFile, external_count, read_events, with_events
from replay.market import DataSource
from services.config import KeelConfig, StrategyConfig
from tests.external_scenario import T0, bar
from tests.factories import MINUTE
from tests.test_backtest import csv_text
from tests.test_backtest_cli import assert_one_error, keel, last_json

SNIPER = {"notional": 100, "delay_s": 0, "stop_pct": 10, "take_profits": "10,20,30"}
CLOSES = [10.0, 10.0, 10.0, 10.5, 11.0, 11.5, 12.0, 13.0, 14.0, 12.0]


def bars() -> list[Bar]:
    return [bar(c, index=i, high=c + 0.2, low=c - 0.2) for i, c in enumerate(CLOSES)]


def listing(ts: int) -> ListingAnnouncement:
    return ListingAnnouncement(ts=ts, source="news", venue="binance", symbol="NEW/USDT")


def write_events(path: Path, events: list) -> Path:
    path.write_bytes(b"".join(encode(e) + b"\n" for e in events))
    return path


def files(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "new.csv"
    data.write_text(csv_text(bars()))
    events = write_events(tmp_path / "events.jsonl", [listing(T0 + 2 * MINUTE)])
    return data, events


def spec(data: Path, events: tuple[EventFile, ...] = ()) -> BacktestSpec:
    strategy = StrategyConfig(name="listing_sniper", params=SNIPER)
    source = DataSource(str(data), symbol="NEW/USDT", venue="test")
    return BacktestSpec(config=KeelConfig(strategies=(strategy,)), data=(source,), events=events)


# --- reading and merging ------------------------------------------------------------------------


def test_merge_is_by_time_with_bars_first_on_ties_and_counts_the_events(tmp_path: Path) -> None:
    at_close = listing(T0 + 2 * MINUTE)  # the time bar 1 closes
    reading = SocialSentiment(ts=T0 + 90 * 10**9, source="x", symbol="NEW/USDT", score=0.9)
    path = write_events(tmp_path / "e.jsonl", [reading, at_close])
    merged = with_events(bars()[:4], (EventFile(str(path)),))
    order = [type(e).__name__ if not isinstance(e, Bar) else e.close_time for e in merged]
    assert order == [
        T0 + MINUTE,
        "SocialSentiment",
        T0 + 2 * MINUTE,
        "ListingAnnouncement",
        T0 + 3 * MINUTE,
        T0 + 4 * MINUTE,
    ]
    assert external_count(merged) == 2
    plain = bars()
    assert with_events(plain, ()) is plain  # no events: the bars untouched


def test_window_unsorted_files_and_blank_lines(tmp_path: Path) -> None:
    events = [listing(T0 + 5 * MINUTE), listing(T0 + MINUTE), listing(T0 + 3 * MINUTE)]
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"\n".join(encode(e) for e in events) + b"\n\n")
    assert [e.ts for e in read_events(EventFile(str(path)))] == [
        T0 + MINUTE,
        T0 + 3 * MINUTE,
        T0 + 5 * MINUTE,
    ]
    merged = with_events([], (EventFile(str(path)),), start=T0 + MINUTE, end=T0 + 5 * MINUTE)
    assert [e.ts for e in merged] == [T0 + MINUTE, T0 + 3 * MINUTE]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{not json", "e.jsonl:2: "),
        (b'{"type":"Bar","ts":1}', "e.jsonl:2: "),
        (b'{"type":"SocialSentiment","ts":1,"source":"x","symbol":"A","score":9}', "score"),
    ],
)
def test_a_bad_line_is_reported_with_its_number(tmp_path: Path, line: bytes, message: str) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(encode(listing(1)) + b"\n" + line + b"\n")
    with pytest.raises(KeelError, match=message):
        read_events(EventFile(str(path)))
    with pytest.raises(KeelError, match="no such file"):
        read_events(EventFile(str(tmp_path / "missing.jsonl")))


# --- backtests ----------------------------------------------------------------------------------


def test_backtest_with_events_trades_on_them_and_is_deterministic(tmp_path: Path) -> None:
    data, events = files(tmp_path)
    without = run_backtest(spec(data))
    assert (without.signals, without.external_events) == (0, 0)
    pinned = (EventFile(str(events)).with_digest(),)
    first = run_backtest(spec(data, pinned), tmp_path / "run")
    again = run_backtest(spec(data, pinned))
    assert first.result_hash == again.result_hash != without.result_hash
    assert (first.bars, first.external_events) == (10, 1)
    # the listing at T0+2m: bar 2 (closes T0+3m) anchors and enters at 10; high 11.2 of
    # bar 4 reaches 11, 12.2 of bar 6 reaches 12, 13.2 of bar 7 reaches 13
    table = pq.read_table(tmp_path / "run" / "events.parquet").to_pylist()
    signals = [decode(row["payload"].encode()) for row in table if row["type"] == "Signal"]
    assert all(isinstance(s, Signal) for s in signals)
    assert [(s.ts, s.target_position) for s in signals] == [
        (T0 + 3 * MINUTE, 10.0),
        (T0 + 5 * MINUTE, pytest.approx(10.0 * 2 / 3)),
        (T0 + 7 * MINUTE, pytest.approx(10.0 / 3)),
        (T0 + 8 * MINUTE, 0.0),
    ]
    assert first.fills == 4
    # an output caused by an external event would carry its id; the signals come from bars
    assert external_envelope(listing(T0 + 2 * MINUTE)).event_id not in {
        row["causation_id"] for row in table
    }


def test_keel_backtest_events_twice_gives_the_same_hash_and_replays(tmp_path: Path) -> None:
    data, events = files(tmp_path)
    args = [
        "backtest",
        "--data",
        data.name,
        "--symbol",
        "NEW/USDT",
        "--venue",
        "test",
        "--strategy",
        "listing_sniper",
        *[a for k, v in SNIPER.items() for a in ("--param", f"{k}={v}")],
        "--events",
        events.name,
        "--json",
    ]
    first = last_json(keel(tmp_path, *args, "--out", "run"))
    second = last_json(keel(tmp_path, *args))
    assert first["result_hash"] == second["result_hash"]
    assert (first["bars"], first["external_events"], first["signals"]) == (10, 1, 4)
    assert first["result_hash"] == run_backtest(spec(data, (EventFile(str(events)),))).result_hash
    replayed = last_json(keel(tmp_path, "replay", "run", "--json"))
    assert replayed["identical"] is True
    recorded = msgspec.json.decode((tmp_path / "run" / "run.json").read_bytes())
    assert recorded["spec"]["events"][0]["location"] == str(events.resolve())


def test_keel_backtest_refuses_a_bad_events_file_in_one_line(tmp_path: Path) -> None:
    data, events = files(tmp_path)
    events.write_bytes(events.read_bytes() + b'{"type":"ListingAnnouncement"}\n')
    common = ["backtest", "--data", data.name, "--strategy", "listing_sniper", "--events"]
    assert_one_error(keel(tmp_path, *common, events.name), "events.jsonl:2")
    assert_one_error(keel(tmp_path, *common, "missing.jsonl"), "no such file")


def test_bus_replay_of_a_run_with_events_gives_the_same_hash(
    tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    data, events = files(tmp_path)
    in_process = run_backtest(spec(data, (EventFile(str(events)),)), tmp_path / "run")
    work = tmp_path / "bus"
    work.mkdir()
    on_bus = bus_replay(load_run(tmp_path / "run"), nats_server.url, work)
    assert (on_bus.bars, on_bus.external_events, on_bus.signals, on_bus.fills) == (10, 1, 4, 4)
    assert on_bus.result_hash == in_process.result_hash
