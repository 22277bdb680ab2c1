"""Bad input is reported, never fatal: issue 13, defects 6, 9 and 10.

6. garbage stored on a bar subject does not block that symbol's feed;
9. an ``ExecutionReport`` with impossible values is refused on decode, naming the field;
10. ``keel backtest`` reports the rows it skips; bad CLI input is one line naming the problem.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.codec import DecodeError, decode, encode
from contracts.events import Bar
from eventstore.bus import Bus
from eventstore.server import EmbeddedServer
from tests import scenario
from tests.conftest import keel
from tests.factories import MINUTE
from tests.test_backtest import csv_text, iso
from tests.test_backtest_cli import SCENARIO_ARGS, last_json, scenario_files
from tests.test_backtest_cli import assert_one_error as cli_one_error
from tests.test_backtest_cli import keel as backtest_cli
from tests.test_cli import START, binance_csv, table_row

SUBJECT = "md.bar.binance.BTC-USDT.1m"
GARBAGE = b"\x00garbage"


def ingest(url: str, path: Path):
    return keel(url, "ingest", str(path), "--venue", "binance", "--symbol", "BTC/USDT")


# 6. an undecodable message on a bar subject


async def test_ingest_continues_after_garbage_on_bar_subject(
    nats_server: EmbeddedServer, bus: Bus, tmp_path: Path
) -> None:
    first = ingest(nats_server.url, binance_csv(tmp_path / "btc.csv", rows=20))
    assert first.returncode == 0, first.stderr
    await bus.js.publish(SUBJECT, GARBAGE)

    again = ingest(nats_server.url, binance_csv(tmp_path / "btc.csv", rows=50))

    both = again.stdout + again.stderr
    assert again.returncode == 0, both
    assert "Traceback" not in both, both
    row = table_row(again.stdout, "btc.csv")
    assert (row[4], row[5]) == ("30", "20")  # stored, already stored
    last = await bus.last_event("MARKET", SUBJECT)
    assert isinstance(last.event, Bar)
    assert last.event.open_time == int((START.timestamp() + 49 * 60) * 1e9)


async def test_last_event_walks_back_past_garbage(
    nats_server: EmbeddedServer, bus: Bus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert await bus.last_event("MARKET", SUBJECT) is None
    await bus.js.publish(SUBJECT, GARBAGE)
    with caplog.at_level(logging.WARNING, logger="keel.bus"):
        assert await bus.last_event("MARKET", SUBJECT) is None  # only garbage: none
    assert "does not decode" in caplog.text

    ingest(nats_server.url, binance_csv(tmp_path / "btc.csv", rows=3))
    for _ in range(3):
        await bus.js.publish(SUBJECT, GARBAGE)
    await bus.js.publish("md.bar.binance.ETH-USDT.1m", GARBAGE)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="keel.bus"):
        last = await bus.last_event("MARKET", SUBJECT)
    assert isinstance(last.event, Bar)
    assert last.event.open_time == int((START.timestamp() + 2 * 60) * 1e9)
    lines = [r for r in caplog.records if r.name == "keel.bus"]
    assert len(lines) == 1, caplog.text


# 9. impossible execution reports and orders are refused on decode, naming the field

negative = st.floats(max_value=-1e-12, min_value=-1e12, allow_nan=False)
positive = st.floats(min_value=1e-9, max_value=1e9, allow_nan=False)
FILLS = ("filled", "partially_filled")


def valid_report(status: str = "filled", **fields: object) -> dict:
    wire = {
        "type": "ExecutionReport",
        "ts": 1,
        "status": status,
        "client_order_id": "c1",
        "strategy": "s",
        "venue": "paper",
        "symbol": "BTC/USDT",
        "side": "buy",
        "order_qty": 2.0,
        "fill_price": 100.0,
        "fill_qty": 1.0,
        "cum_qty": 1.0,
        "fee": 0.1,
    }
    return {**wire, **fields}


def refused(wire: dict, field: str) -> None:
    with pytest.raises(DecodeError, match=field):
        decode(msgspec.json.encode(wire))


@st.composite
def impossible_reports(draw: st.DrawFn) -> tuple[dict, str]:
    """A report with one impossible value, and the field the refusal must name."""
    status = draw(st.sampled_from(FILLS))
    if draw(st.booleans()):
        field = draw(st.sampled_from(["fill_price", "fill_qty", "order_qty", "cum_qty"]))
        return valid_report(status, **{field: draw(negative)}), field
    price = draw(st.just(0.0) | st.just(-0.0) | negative)
    return valid_report(status, fill_price=price, fill_qty=draw(positive)), "fill_price"


@settings(max_examples=200, deadline=None)
@given(impossible_reports())
def test_impossible_execution_reports_are_refused_naming_the_field(case: tuple[dict, str]) -> None:
    wire, field = case
    refused(wire, field)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(FILLS), positive, positive, st.floats(-1e6, 1e6))
def test_legitimate_fills_decode(status: str, price: float, qty: float, fee: float) -> None:
    """A negative fee is a maker rebate (docs/fill-models.md): accepted."""
    wire = valid_report(status, fill_price=price, fill_qty=qty, cum_qty=qty, fee=fee)
    assert decode(msgspec.json.encode(wire)).fee == fee


def test_reports_without_a_fill_decode() -> None:
    """Acknowledgements, cancels and restatements of an order's status (the order manager's
    amendment of a partly filled order, a status query) carry no fill."""
    for status in ("accepted", "canceled", "rejected", "expired", "partially_filled", "filled"):
        report = decode(msgspec.json.encode(valid_report(status, fill_price=0.0, fill_qty=0.0)))
        assert report.fill_qty == 0.0
        assert decode(encode(report)) == report


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["qty", "limit_price", "stop_price"]), st.just(0.0) | negative)
def test_impossible_orders_are_refused_naming_the_field(field: str, value: float) -> None:
    wire = {
        "type": "OrderCommand",
        "ts": 1,
        "action": "new",
        "client_order_id": "c1",
        "strategy": "s",
        "venue": "paper",
        "symbol": "BTC/USDT",
        "side": "buy",
        "qty": 1.0,
        "order_type": "stop_limit",
        "limit_price": 100.0,
        "stop_price": 99.0,
    }
    refused({**wire, field: value}, field)


# 10. keel backtest reports the rows it skips; bad CLI input is one line naming the problem


def bad_rows_csv(path: Path) -> Path:
    """The scenario's bars with a NaN row, a negative price and a duplicated open time."""
    lines = csv_text(scenario.bars()).splitlines()
    header, rows = lines[0], lines[1:]
    nan_row = ",".join([rows[4].split(",")[0], "nan", *rows[4].split(",")[2:]])
    negative = rows[6].split(",")
    negative[4] = "-1.0"  # close
    rows = [*rows[:4], rows[3], nan_row, *rows[5:6], ",".join(negative), *rows[7:]]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_backtest_reports_skipped_rows(tmp_path: Path) -> None:
    scenario_files(tmp_path)
    data = bad_rows_csv(tmp_path / "bad.csv")

    result = backtest_cli(tmp_path, "backtest", "--data", data.name, *SCENARIO_ARGS)

    both = result.stdout + result.stderr
    assert result.returncode == 0, both
    assert "bad.csv: 3 rows skipped" in result.stdout, both
    skipped = [line for line in result.stdout.splitlines() if "bad.csv: skipped row" in line]
    assert len(skipped) == 3, result.stdout
    assert any("row 6:" in line for line in skipped), skipped  # the duplicate (line 6)

    as_json = backtest_cli(tmp_path, "backtest", "--data", data.name, *SCENARIO_ARGS, "--json")
    assert last_json(as_json)["bars"] == 8
    assert "bad.csv: 3 rows skipped" in as_json.stderr


def test_backtest_of_clean_data_reports_nothing_skipped(tmp_path: Path) -> None:
    data, _ = scenario_files(tmp_path)
    result = backtest_cli(tmp_path, "backtest", "--data", data.name, *SCENARIO_ARGS)
    assert result.returncode == 0, result.stderr
    assert "skipped" not in result.stdout


def test_backtest_data_directory_is_named_as_such(tmp_path: Path) -> None:
    scenario_files(tmp_path)
    (tmp_path / "bars").mkdir()
    line = cli_one_error(backtest_cli(tmp_path, "backtest", "--data", "bars"), "bars")
    assert "is a directory" in line and "no such file" not in line


def test_backtest_reversed_window_is_named_as_such(tmp_path: Path) -> None:
    scenario_files(tmp_path)
    start = iso(scenario.T0 + 7 * MINUTE)
    end = iso(scenario.T0 + 2 * MINUTE)
    args = ["backtest", "--data", "scenario.csv", *SCENARIO_ARGS, "--start", start, "--end", end]
    cli_one_error(backtest_cli(tmp_path, *args), "--start is after --end", "reversed")


@pytest.mark.parametrize(
    "pattern", ["exec.>.x", "exec..report", "md.bar.BTC/USDT", "exec.rep*rt", "exec.>.>", " exec"]
)
def test_tap_refuses_an_invalid_pattern(nats_server: EmbeddedServer, pattern: str) -> None:
    result = keel(nats_server.url, "tap", pattern, "--no-follow")
    line = cli_one_error(result, "is invalid")
    assert repr(pattern) in line


def test_tap_accepts_valid_patterns(nats_server: EmbeddedServer) -> None:
    for pattern in (
        "exec.>",
        "md.bar.*.BTC-USDT.*",
        "exec.report.paper.BTC-USDT",
        "sig.ma_cross.>",
    ):
        result = keel(nats_server.url, "tap", pattern, "--no-follow")
        assert result.returncode == 0, result.stderr


POSITION = {
    "type": "PositionChanged",
    "ts": 1,
    "venue": "paper",
    "symbol": "BTC/USDT",
    "qty": -1.0,
    "avg_price": 100.0,
    "realized_pnl": -5.0,
    "margin_used": 10.0,
}
EQUITY = {
    "type": "EquitySnapshot",
    "ts": 1,
    "cash": -50.0,
    "equity": 100.0,
    "realized_pnl": -1.0,
    "unrealized_pnl": -2.0,
    "fees": -0.5,
    "gross_exposure": 150.0,
    "margin_used": 10.0,
}


@settings(max_examples=50, deadline=None)
@given(
    st.sampled_from(
        [
            (POSITION, "avg_price"),
            (POSITION, "margin_used"),
            (EQUITY, "gross_exposure"),
            (EQUITY, "margin_used"),
        ]
    ),
    negative,
)
def test_impossible_positions_and_books_are_refused(case: tuple[dict, str], value: float) -> None:
    wire, field = case
    assert decode(msgspec.json.encode(wire)) is not None  # signed fields stay signed
    refused({**wire, field: value}, field)
