"""The one interval and duration parser: what it accepts, what it refuses, and that every
length it can name round-trips."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.intervals import (
    Interval,
    IntervalError,
    duration_ns,
    interval_ns,
    periods_per_year,
)
from contracts.keys import BookId, InstrumentId, KeyTable
from eventstore.errors import KeelError
from services.config import load_config


@pytest.mark.parametrize(
    ("text", "ns"),
    [("1s", 10**9), ("1m", 60 * 10**9), ("4h", 4 * 3600 * 10**9), ("1d", 86_400 * 10**9)],
)
def test_intervals_parse_to_their_length(text: str, ns: int) -> None:
    assert interval_ns(text) == ns
    assert str(Interval.parse(text)) == text


@pytest.mark.parametrize("text", ["1M", "0h", "h", " 1h", "1.5h", "01h", "1y", "", "250ms"])
def test_anything_else_is_an_error_naming_the_text(text: str) -> None:
    with pytest.raises(IntervalError, match=repr(text).replace("(", r"\(")):
        Interval.parse(text)


def test_periods_per_year_counts_calendar_days() -> None:
    assert periods_per_year("1d") == 365
    assert periods_per_year("1m") == 525_600
    assert periods_per_year("1w") == 365 / 7
    with pytest.raises(IntervalError):
        periods_per_year("1M")


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["s", "m", "h", "d", "w"]))
def test_every_length_round_trips_in_its_largest_unit(count: int, unit: str) -> None:
    interval = Interval.parse(f"{count}{unit}")
    back = Interval.from_ns(interval.ns)
    assert back is not None and back.ns == interval.ns
    assert Interval.parse(str(back)) == back


def test_a_length_that_is_not_whole_seconds_has_no_interval() -> None:
    assert Interval.from_ns(1_500_000_000) is None
    assert Interval.from_ns(0) is None


@pytest.mark.parametrize(
    ("text", "ns"),
    [("0s", 0), ("250ms", 250 * 10**6), ("1.5h", 5400 * 10**9), (" 6h ", 6 * 3600 * 10**9)],
)
def test_durations_may_be_fractional_and_in_milliseconds(text: str, ns: int) -> None:
    assert duration_ns(text) == ns


@pytest.mark.parametrize("text", ["-1s", "5", "1M", "1y", "five minutes"])
def test_a_bad_duration_names_what_it_is_for(text: str) -> None:
    with pytest.raises(IntervalError, match=r"^resume_after \("):
        duration_ns(text, "resume_after")


def test_keys_are_values_that_survive_a_snapshot() -> None:
    market = InstrumentId("binance", "BTC/USDT:USDT")
    book = BookId("ma_cross", market)
    state = {book: 1.5, BookId("turtle", market): -2.0}
    data = msgspec.msgpack.encode(state)
    assert msgspec.msgpack.decode(data, type=dict[BookId, float]) == state
    assert (str(market), str(book)) == ("binance|BTC/USDT:USDT", "ma_cross|binance|BTC/USDT:USDT")
    assert book.venue == "binance" and book.symbol == "BTC/USDT:USDT"


def test_a_key_table_hands_out_one_object_per_market_and_book() -> None:
    restored_market = InstrumentId("sim", "SOL/USDT")
    restored_book = BookId("turtle", InstrumentId("sim", "ETH/USDT"))
    keys = KeyTable((restored_market, restored_book))
    assert keys.market("sim", "SOL/USDT") is restored_market
    assert keys.market("sim", "ETH/USDT") is restored_book.instrument
    assert keys.book("turtle", keys.market("sim", "ETH/USDT")) is restored_book
    fresh = keys.market("binance", "BTC/USDT")
    assert (
        fresh == InstrumentId("binance", "BTC/USDT") and keys.market("binance", "BTC/USDT") is fresh
    )
    assert keys.book("ma", fresh) is keys.book("ma", fresh)
    assert keys.markets["binance"]["BTC/USDT"] is fresh


def test_a_config_with_a_market_interval_that_does_not_parse_is_one_line(tmp_path) -> None:
    path = tmp_path / "keel.toml"
    path.write_text('[market]\ninterval = "1M"\n')
    with pytest.raises(KeelError, match=r"interval '1M': expected .* - at `\$.market`"):
        load_config(path)
