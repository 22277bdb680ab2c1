"""Bar file readers: every supported layout, the row rules, and one-line errors on bad files."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.events import Bar
from services.marketdata import bar_slices, formats
from services.marketdata.sources import (
    VALUE_COLUMNS,
    BarFile,
    SourceError,
    is_time_sorted,
    iter_bars,
    read_bars,
)

MINUTE = 60_000_000_000
DAY = 86_400_000_000_000
MARCH_1 = 1_677_628_800_000_000_000  # 2023-03-01T00:00:00Z
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def read(path: Path, interval: str | None = None) -> BarFile:
    return read_bars(path, venue="test", symbol="BTC/USDT", interval=interval)


def assert_first(
    result: BarFile, open_time: int, ohlcv: tuple[float, float, float, float, float], step: int
) -> None:
    bar = result.bars[0]
    assert bar.open_time == open_time
    assert bar.close_time == open_time + step
    assert bar.ts == bar.close_time
    assert (bar.open, bar.high, bar.low, bar.close, bar.volume) == ohlcv
    assert (bar.venue, bar.symbol, bar.interval) == ("test", "BTC/USDT", result.interval)


def assert_plain_floats(result: BarFile) -> None:
    for bar in result.bars:
        values = (bar.open, bar.high, bar.low, bar.close, bar.volume)
        assert all(type(value) is float for value in values)


BINANCE_ROWS_MS = (
    "1677628800000,23140.48,23150.77,23128.52,23142.31,2.131777,1677628859999,"
    "49330.12,120,1.1,25455.0,0\n"
    "1677628860000,23143.89,23148.80,23137.61,23137.77,0.881378,1677628919999,"
    "20400.5,80,0.4,9000.0,0\n"
    "1677628920000,23137.77,23140.00,23130.00,23139.10,0,1677628979999,0,0,0,0,0\n"
)


def test_binance_without_header_milliseconds(tmp_path: Path) -> None:
    result = read(write(tmp_path, "BTCUSDT-1m-2023-03.csv", BINANCE_ROWS_MS))
    assert result.interval == "1m"
    assert len(result.bars) == 3
    assert result.skipped == ()
    assert_first(result, MARCH_1, (23140.48, 23150.77, 23128.52, 23142.31, 2.131777), MINUTE)
    assert result.bars[2].volume == 0.0
    assert_plain_floats(result)


def test_binance_without_header_microseconds(tmp_path: Path) -> None:
    text = (
        "1735689600000000,93576.00,93610.93,93537.50,93610.93,8.21827,1735689659999999,"
        "768978.1,1674,3.1,290000.0,0\n"
        "1735689660000000,93610.93,93658.01,93610.93,93658.00,2.22,1735689719999999,"
        "207000.0,900,1.0,93600.0,0\n"
    )
    result = read(write(tmp_path, "BTCUSDT-1m-2025-01.csv", text))
    assert result.interval == "1m"
    open_time = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000_000
    assert_first(result, open_time, (93576.0, 93610.93, 93537.5, 93610.93, 8.21827), MINUTE)


def test_binance_with_header(tmp_path: Path) -> None:
    header = (
        "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
        "taker_buy_volume,taker_buy_quote_volume,ignore\n"
    )
    result = read(write(tmp_path, "klines.csv", header + BINANCE_ROWS_MS))
    assert result.interval == "1m"
    assert len(result.bars) == 3
    assert_first(result, MARCH_1, (23140.48, 23150.77, 23128.52, 23142.31, 2.131777), MINUTE)


def test_iso_with_timezone_offsets_and_z(tmp_path: Path) -> None:
    text = (
        "open_time,open,high,low,close,volume\n"
        "2023-03-01 00:00:00+00:00,23140.48,23150.77,23128.52,23142.31,2.131777\n"
        "2023-03-01T00:01:00Z,23143.89,23148.8,23137.61,23137.77,0.881378\n"
        "2023-03-01 02:02:00+02:00,23137.77,23140.0,23130.0,23139.1,1.5\n"
    )
    result = read(write(tmp_path, "iso.csv", text))
    assert result.interval == "1m"
    assert [bar.open_time for bar in result.bars] == [
        MARCH_1,
        MARCH_1 + MINUTE,
        MARCH_1 + 2 * MINUTE,
    ]
    assert_first(result, MARCH_1, (23140.48, 23150.77, 23128.52, 23142.31, 2.131777), MINUTE)


def test_naive_iso_is_utc(tmp_path: Path) -> None:
    text = (
        "datetime,open,high,low,close,volume\n"
        "2023-03-01T00:00:00,10,11,9,10.5,100\n"
        "2023-03-01T00:05:00,10.5,12,10,11,50\n"
        "2023-03-01T00:10:00,11,11.5,10.8,11.2,70\n"
    )
    result = read(write(tmp_path, "naive.csv", text))
    assert result.interval == "5m"
    assert_first(result, MARCH_1, (10.0, 11.0, 9.0, 10.5, 100.0), 5 * MINUTE)
    assert_plain_floats(result)


def test_yahoo_daily_with_adj_close(tmp_path: Path) -> None:
    text = (
        "Date,Open,High,Low,Close,Adj Close,Volume\n"
        "1999-01-22,1.750000,1.953125,1.552083,1.640625,1.518424,67867200\n"
        "1999-01-25,1.770833,1.833333,1.640625,1.812500,1.677496,12762000\n"
        "1999-01-26,1.833333,1.869792,1.645833,1.671875,1.547317,8580000\n"
        "1999-01-27,1.677083,1.718750,1.583333,1.666667,1.542497,6109200\n"
    )
    result = read(write(tmp_path, "nvda.csv", text))
    assert result.interval == "1d"
    open_time = int(datetime(1999, 1, 22, tzinfo=UTC).timestamp()) * 1_000_000_000
    assert_first(result, open_time, (1.75, 1.953125, 1.552083, 1.640625, 67867200.0), DAY)
    assert_plain_floats(result)


def test_epoch_seconds_with_header(tmp_path: Path) -> None:
    text = (
        "timestamp,open,high,low,close,volume\n"
        "1677628800,100,101,99,100.5,3\n"
        "1677632400,100.5,102,100,101,4\n"
    )
    result = read(write(tmp_path, "hourly.csv", text))
    assert result.interval == "1h"
    assert_first(result, MARCH_1, (100.0, 101.0, 99.0, 100.5, 3.0), 60 * MINUTE)


def test_epoch_milliseconds_with_header(tmp_path: Path) -> None:
    text = (
        "time,open,high,low,close,volume\n"
        "1677628800000,100,101,99,100.5,3\n"
        "1677643200000,100.5,102,100,101,4\n"
    )
    result = read(write(tmp_path, "four_hourly.csv", text))
    assert result.interval == "4h"
    assert_first(result, MARCH_1, (100.0, 101.0, 99.0, 100.5, 3.0), 240 * MINUTE)


def test_headerless_kraken_style_with_gaps(tmp_path: Path) -> None:
    text = (
        "1672531200,16535.97,16535.97,16522.66,16522.66,0.01429883,2\n"
        "1672531260,16522.66,16530.00,16520.00,16525.00,0.5,3\n"
        "1672531380,16525.00,16525.00,16525.00,16525.00,0.1,1\n"
        "1672531440,16525.00,16526.00,16524.00,16526.00,0.2,2\n"
        "1672531740,16513.41,16513.41,16513.41,16513.41,0.00039585,1\n"
    )
    result = read(write(tmp_path, "BTCUSDC.csv", text))
    assert result.interval == "1m"
    assert len(result.bars) == 5
    assert result.bars[-1].open_time == 1_672_531_740 * 1_000_000_000
    open_time = 1_672_531_200 * 1_000_000_000
    assert_first(result, open_time, (16535.97, 16535.97, 16522.66, 16522.66, 0.01429883), MINUTE)


def test_mixed_case_headers_and_extra_columns(tmp_path: Path) -> None:
    text = (
        "Symbol,TimeStamp,OPEN,High,low,Close,VOLUME,Trades\n"
        "BTC,2023-03-01T00:00:00Z,1,2,0.5,1.5,10,7\n"
        "BTC,2023-03-01T00:15:00Z,1.5,2,1,1.2,11,8\n"
    )
    result = read(write(tmp_path, "mixed.csv", text))
    assert result.interval == "15m"
    assert_first(result, MARCH_1, (1.0, 2.0, 0.5, 1.5, 10.0), 15 * MINUTE)


@pytest.mark.parametrize("time_zone", [None, "UTC", "Europe/Berlin"])
def test_parquet_with_datetime_column(tmp_path: Path, time_zone: str | None) -> None:
    start = datetime(2023, 3, 1)
    times = pl.datetime_range(start, datetime(2023, 3, 1, 0, 2), "1m", eager=True)
    if time_zone is not None:
        times = times.dt.replace_time_zone(time_zone)
    frame = pl.DataFrame(
        {
            "Timestamp": times,
            "Open": [1.0, 2.0, 3.0],
            "High": [2.0, 3.0, 4.0],
            "Low": [0.5, 1.5, 2.5],
            "Close": [1.5, 2.5, 3.5],
            "Volume": [1, 2, 3],
        }
    )
    path = tmp_path / "bars.parquet"
    frame.write_parquet(path)
    result = read(path)
    assert result.interval == "1m"
    offset = 3_600_000_000_000 if time_zone == "Europe/Berlin" else 0
    assert_first(result, MARCH_1 - offset, (1.0, 2.0, 0.5, 1.5, 1.0), MINUTE)
    assert_plain_floats(result)


def test_parquet_with_integer_epoch_and_date(tmp_path: Path) -> None:
    epoch = tmp_path / "epoch.parquet"
    pl.DataFrame(
        {
            "open_time": [1_677_628_800_000, 1_677_628_860_000],
            "open": [1.0, 2.0],
            "high": [2.0, 3.0],
            "low": [0.5, 1.5],
            "close": [1.5, 2.5],
            "volume": [0.0, 1.0],
        }
    ).write_parquet(epoch)
    result = read(epoch)
    assert result.interval == "1m"
    assert_first(result, MARCH_1, (1.0, 2.0, 0.5, 1.5, 0.0), MINUTE)

    daily = tmp_path / "daily.parquet"
    pl.DataFrame(
        {
            "date": [date(2023, 3, 1), date(2023, 3, 2)],
            "open": [1.0, 2.0],
            "high": [2.0, 3.0],
            "low": [0.5, 1.5],
            "close": [1.5, 2.5],
            "volume": [5.0, 6.0],
        }
    ).write_parquet(daily)
    assert_first(read(daily), MARCH_1, (1.0, 2.0, 0.5, 1.5, 5.0), DAY)


def test_given_interval_wins_and_is_normalised(tmp_path: Path) -> None:
    path = write(tmp_path, "one.csv", "ts,open,high,low,close,volume\n1677628800,1,2,0.5,1.5,1\n")
    result = read(path, interval="60s")
    assert result.interval == "1m"
    assert result.bars[0].interval == "1m"
    assert result.bars[0].close_time == MARCH_1 + MINUTE
    with pytest.raises(SourceError, match=r"one\.csv: need at least 2 distinct open times"):
        read(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1s", 1_000_000_000),
        ("1m", MINUTE),
        ("5m", 5 * MINUTE),
        ("15m", 15 * MINUTE),
        ("1h", 60 * MINUTE),
        ("4h", 240 * MINUTE),
        ("1d", DAY),
        ("1w", 7 * DAY),
    ],
)
def test_given_interval(tmp_path: Path, text: str, expected: int) -> None:
    path = write(
        tmp_path, "one.csv", "open_time,open,high,low,close,volume\n2023-03-01,1,2,1,2,3\n"
    )
    bar = read(path, text).bars[0]
    assert bar.close_time - bar.open_time == expected


@pytest.mark.parametrize("text", ["", "m", "0m", "1M", "1y", "1.5h", " 1m", "1 m", "-1m", "1mo"])
def test_given_interval_rejects(tmp_path: Path, text: str) -> None:
    path = write(
        tmp_path, "one.csv", "open_time,open,high,low,close,volume\n2023-03-01,1,2,1,2,3\n"
    )
    with pytest.raises(SourceError, match=r"one\.csv: interval '.*': expected a whole number"):
        read(path, text)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nope\.csv: file not found"):
        read(tmp_path / "nope.csv")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(SourceError, match=r"empty\.csv: empty file"):
        read(path)


def test_header_only(tmp_path: Path) -> None:
    path = write(tmp_path, "header.csv", "open_time,open,high,low,close,volume\n")
    with pytest.raises(SourceError, match=r"header\.csv: no data rows"):
        read(path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("garbled.csv", bytes(range(256)) * 4),
        ("latin.csv", "Date,Open\n1999-01-22,\xe9\n".encode("latin-1")),
        ("fake.parquet", b"open_time,open\n1,2\n"),
        ("broken.parquet", b"PAR1" + bytes(range(200)) + b"PAR1"),
    ],
)
def test_garbled_content(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SourceError) as info:
        read(path)
    message = str(info.value)
    assert name in message
    assert "\n" not in message


def test_no_time_column(tmp_path: Path) -> None:
    path = write(tmp_path, "notime.csv", "when,open,high,low,close,volume\nx,1,2,0.5,1,1\n")
    with pytest.raises(SourceError, match=r"notime\.csv: no time column"):
        read(path)


def test_missing_close_column(tmp_path: Path) -> None:
    text = "date,open,high,low,volume\n2023-03-01,1,2,0.5,1\n2023-03-02,1,2,0.5,1\n"
    with pytest.raises(SourceError, match=r"noclose\.csv: missing column 'close'"):
        read(write(tmp_path, "noclose.csv", text))


def test_unparseable_date(tmp_path: Path) -> None:
    text = "date,open,high,low,close,volume\n2023-03-01,1,2,0.5,1,1\nyesterday,1,2,0.5,1,1\n"
    with pytest.raises(
        SourceError, match=r"baddate\.csv: unparseable timestamp 'yesterday' at row 3"
    ):
        read(write(tmp_path, "baddate.csv", text))


def test_too_few_headerless_columns(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"narrow\.csv: headerless CSV needs 6 columns"):
        read(write(tmp_path, "narrow.csv", "1677628800,1,2,0.5\n"))


def test_duplicates_and_out_of_order_rows(tmp_path: Path) -> None:
    text = (
        "open_time,open,high,low,close,volume\n"
        "2023-03-01T00:10:00Z,3,3,3,3,3\n"
        "2023-03-01T00:00:00Z,1,1,1,1,1\n"
        "2023-03-01T00:05:00Z,2,2,2,2,2\n"
        "2023-03-01T00:05:00Z,9,9,9,9,9\n"
        "2023-03-01T00:00:00Z,8,8,8,8,8\n"
    )
    result = read(write(tmp_path, "dupes.csv", text))
    assert [bar.open_time for bar in result.bars] == [MARCH_1 + k * 5 * MINUTE for k in range(3)]
    assert [bar.close for bar in result.bars] == [1.0, 2.0, 3.0]
    assert result.interval == "5m"
    assert result.skipped == (
        "row 5: duplicate open_time 2023-03-01T00:05:00Z",
        "row 6: duplicate open_time 2023-03-01T00:00:00Z",
    )


def test_invalid_rows_are_skipped_with_reasons(tmp_path: Path) -> None:
    text = (
        "open_time,open,high,low,close,volume\n"
        "2023-03-01T00:00:00Z,1,2,0.5,1.5,1\n"
        "2023-03-01T00:01:00Z,1,0.5,2,1.5,1\n"
        "2023-03-01T00:01:00Z,1,2,0.5,1.6,1\n"
        "2023-03-01T00:02:00Z,0,2,0.5,1.5,1\n"
        "2023-03-01T00:03:00Z,1,2,0.5,NaN,1\n"
        "2023-03-01T00:04:00Z,1,2,0.5,1.5,-1\n"
        "2023-03-01T00:05:00Z,1,2,0.5,abc,\n"
        "\n"
        ",1,2,0.5,1.5,1\n"
        "2023-03-01T00:06:00Z,1,2,0.5,1.5,0\n"
    )
    result = read(write(tmp_path, "invalid.csv", text))
    assert [bar.open_time for bar in result.bars] == [
        MARCH_1,
        MARCH_1 + MINUTE,
        MARCH_1 + 6 * MINUTE,
    ]
    assert result.bars[1].close == 1.6
    rows = [reason.split(":")[0] for reason in result.skipped]
    assert rows == ["row 3", "row 5", "row 6", "row 7", "row 8", "row 10"]
    assert all("invalid bar (" in reason for reason in result.skipped[:4])
    assert "low" in result.skipped[0]
    assert "finite" in result.skipped[2]
    assert result.skipped[4:] == (
        "row 8: missing or non-numeric close, volume",
        "row 10: missing timestamp",
    )


def test_all_rows_invalid(tmp_path: Path) -> None:
    text = "date,open,high,low,close,volume\n2023-03-01,1,0.5,2,1,1\n2023-03-02,1,0.5,2,1,1\n"
    with pytest.raises(SourceError, match=r"allbad\.csv: no valid rows \(first problem: row 2"):
        read(write(tmp_path, "allbad.csv", text))


def test_thirty_thousand_rows_read_in_full(tmp_path: Path) -> None:
    lines = ["open_time,open,high,low,close,volume"]
    for index in range(30_000):
        stamp = datetime.fromtimestamp(MARCH_1 // 1_000_000_000 + 60 * index, UTC)
        lines.append(f"{stamp:%Y-%m-%d %H:%M:%S}+00:00,100.5,101.25,99.75,100.0,1.5")
    path = write(tmp_path, "big.csv", "\n".join(lines) + "\n")
    result = read(path)
    assert len(result.bars) == 30_000
    assert result.bars[-1].open_time - result.bars[0].open_time == 29_999 * 60 * 10**9


real_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real market data not found at {DATA} (only on the team's machines)"
)


@real_data
def test_real_binanceus_minute_bars() -> None:
    result = read(DATA / "binanceus-1m-2023-03" / "BTCUSDT.csv")
    assert len(result.bars) == 30_240
    assert result.interval == "1m"
    assert result.skipped == ()
    assert result.bars[0].open_time == MARCH_1
    assert all(isinstance(bar, Bar) for bar in result.bars[:10])


@real_data
def test_real_kraken_sparse_minute_bars() -> None:
    result = read(DATA / "kraken-1m-2023q1" / "BTCUSDC.csv")
    assert len(result.bars) == 56_717
    assert result.interval == "1m"
    first = datetime.fromtimestamp(result.bars[0].open_time / 1e9, UTC)
    assert first.date() == date(2023, 1, 1)


@real_data
def test_real_daily_equities() -> None:
    result = read(DATA / "equities-daily" / "nvda-1999-2014.csv")
    assert result.interval == "1d"
    assert result.bars[0].open_time == int(datetime(1999, 1, 22, tzinfo=UTC).timestamp()) * 10**9
    assert result.skipped == ()


# --- streaming: iter_bars ------------------------------------------------------------------------

ISO_OFFSETS = (
    "open_time,open,high,low,close,volume\n"
    "2023-03-01 00:00:00+00:00,23140.48,23150.77,23128.52,23142.31,2.131777\n"
    "2023-03-01T00:01:00Z,23143.89,23148.8,23137.61,23137.77,0.881378\n"
    "2023-03-01 02:02:00+02:00,23137.77,23140.0,23130.0,23139.1,1.5\n"
)
SORTED_CSV = {
    "binance_ms.csv": BINANCE_ROWS_MS,
    "binance_us.csv": (
        "1735689600000000,93576.00,93610.93,93537.50,93610.93,8.21827,1735689659999999,"
        "768978.1,1674,3.1,290000.0,0\n"
        "1735689660000000,93610.93,93658.01,93610.93,93658.00,2.22,1735689719999999,"
        "207000.0,900,1.0,93600.0,0\n"
    ),
    "binance_header.csv": "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
    "taker_buy_volume,taker_buy_quote_volume,ignore\n" + BINANCE_ROWS_MS,
    "iso_offsets.csv": ISO_OFFSETS,
    "naive.csv": (
        "datetime,open,high,low,close,volume\n"
        "2023-03-01T00:00:00,10,11,9,10.5,100\n"
        "2023-03-01T00:05:00,10.5,12,10,11,50\n"
        "2023-03-01T00:10:00,11,11.5,10.8,11.2,70\n"
    ),
    "yahoo.csv": (
        "Date,Open,High,Low,Close,Adj Close,Volume\n"
        "1999-01-22,1.750000,1.953125,1.552083,1.640625,1.518424,67867200\n"
        "1999-01-25,1.770833,1.833333,1.640625,1.812500,1.677496,12762000\n"
        "1999-01-26,1.833333,1.869792,1.645833,1.671875,1.547317,8580000\n"
        "1999-01-27,1.677083,1.718750,1.583333,1.666667,1.542497,6109200\n"
    ),
    "epoch_s.csv": "timestamp,open,high,low,close,volume\n"
    "1677628800,100,101,99,100.5,3\n1677632400,100.5,102,100,101,4\n",
    "epoch_ms.csv": "time,open,high,low,close,volume\n"
    "1677628800000,100,101,99,100.5,3\n1677643200000,100.5,102,100,101,4\n",
    "float_epochs.csv": "time,open,high,low,close,volume\n"
    "1677628800,100,101,99,100.5,3\n1677628860.0,100.5,102,100,101,4\n"
    "1677628920.5,100.5,102,100,101,4\n1677628980,100.5,102,100,101,4\n",
    "kraken.csv": (
        "1672531200,16535.97,16535.97,16522.66,16522.66,0.01429883,2\n"
        "1672531260,16522.66,16530.00,16520.00,16525.00,0.5,3\n"
        "1672531380,16525.00,16525.00,16525.00,16525.00,0.1,1\n"
        "1672531440,16525.00,16526.00,16524.00,16526.00,0.2,2\n"
        "1672531740,16513.41,16513.41,16513.41,16513.41,0.00039585,1"  # no final newline
    ),
    "mixed_case.csv": (
        "Symbol,TimeStamp,OPEN,High,low,Close,VOLUME,Trades\n"
        "BTC,2023-03-01T00:00:00Z,1,2,0.5,1.5,10,7\n"
        "BTC,2023-03-01T00:15:00Z,1.5,2,1,1.2,11,8\n"
    ),
    "invalid_rows.csv": (
        "open_time,open,high,low,close,volume\r\n"
        "2023-03-01T00:00:00Z,1,2,0.5,1.5,1\r\n"
        "2023-03-01T00:01:00Z,1,0.5,2,1.5,1\r\n"
        "2023-03-01T00:01:00Z,1,2,0.5,1.6,1\r\n"
        "2023-03-01T00:01:00Z,1,2,0.5,1.7,1\r\n"
        "2023-03-01T00:02:00Z,0,2,0.5,1.5,1\r\n"
        "2023-03-01T00:03:00Z,1,2,0.5,NaN,1\r\n"
        "\r\n"
        "\r\n"
        "2023-03-01T00:05:00Z,1,2,0.5,abc,\r\n"
        ",1,2,0.5,1.5,1\r\n"
        "2023-03-01T00:06:00Z,1,2,0.5,1.5,0\r\n"
    ),
    "headerless_blank_line.csv": "1677628800,1,2,0.5,1.5,1\n\n1677628860,1,2,0.5,1.5,1\n",
    "bom.csv": "\ufeff1677628800,1,2,0.5,1.5,1\n1677628860,1,2,0.5,1.5,1\n",
}


def parquet_fixtures(tmp_path: Path) -> list[Path]:
    times = pl.datetime_range(datetime(2023, 3, 1), datetime(2023, 3, 1, 0, 4), "1m", eager=True)
    values = {
        "Open": [1.0, 2.0, 3.0, 4.0, 5.0],
        "High": [2.0, 3.0, 4.0, 5.0, 6.0],
        "Low": [0.5, 1.5, 2.5, 3.5, 4.5],
        "Close": [1.5, 2.5, 3.5, 4.5, 5.5],
        "Volume": [1, 2, 3, 4, 5],
    }
    frames = {
        "naive.parquet": pl.DataFrame({"Timestamp": times, **values}),
        "berlin.parquet": pl.DataFrame(
            {"Timestamp": times.dt.replace_time_zone("Europe/Berlin"), **values}
        ),
        "epoch_ms.parquet": pl.DataFrame(
            {"open_time": [1_677_628_800_000 + k * 60_000 for k in range(5)], **values}
        ),
        "daily.parquet": pl.DataFrame(
            {"date": [date(2023, 3, day) for day in range(1, 6)], **values}
        ),
        "gaps_and_blanks.parquet": pl.DataFrame(
            {
                "ts": [MARCH_1, None, MARCH_1 + MINUTE, MARCH_1 + MINUTE, MARCH_1 + 9 * MINUTE],
                **{**values, "Close": [1.5, None, 2.5, 2.6, None]},
            }
        ),
    }
    paths = []
    for name, frame in frames.items():
        frame.write_parquet(tmp_path / name, row_group_size=2)
        paths.append(tmp_path / name)
    return paths


def stream(path: Path, interval: str | None = None, chunk_rows: int = 200_000) -> BarFile:
    """iter_bars consumed into a BarFile, to compare with read_bars."""
    bars = iter_bars(
        path, venue="test", symbol="BTC/USDT", interval=interval, chunk_rows=chunk_rows
    )
    return BarFile(bars=tuple(bars), interval=bars.interval, skipped=tuple(bars.skipped))


def sorted_fixtures(tmp_path: Path) -> list[Path]:
    return [write(tmp_path, name, text) for name, text in SORTED_CSV.items()] + parquet_fixtures(
        tmp_path
    )


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 200_000])
def test_iter_bars_equals_read_bars_on_every_sorted_format(tmp_path: Path, chunk_rows: int) -> None:
    for path in sorted_fixtures(tmp_path):
        assert is_time_sorted(path), path
        whole = read(path)
        assert len(whole.bars) >= 2, path
        assert stream(path, chunk_rows=chunk_rows) == whole, path
        assert stream(path, "1m", chunk_rows) == read(path, "1m"), path


def test_iter_bars_csv_reads_lines_across_small_byte_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks that end mid-line, lines longer than a block, CRLF, blank lines, no final newline."""
    monkeypatch.setattr(formats, "_CSV_CHUNK_BYTES", 7)
    for path in sorted_fixtures(tmp_path):
        for chunk_rows in (1, 4, 200_000):
            assert stream(path, chunk_rows=chunk_rows) == read(path), (path, chunk_rows)


def test_iter_bars_many_chunks(tmp_path: Path) -> None:
    lines = ["open_time,open,high,low,close,volume"]
    for index in range(5_000):
        stamp = MARCH_1 // 1_000_000 + 60_000 * index
        lines.append(f"{stamp},100.5,101.25,99.75,{100 + index % 7},1.5")
    lines[2001] = lines[2000]  # a duplicate across a boundary of 1,000-row chunks
    lines[3001] = "2023-03-01T00:00:00Z,1,1,1,1,1"
    path = write(tmp_path, "many.csv", "\n".join(lines) + "\n")
    with pytest.raises(SourceError, match=r"many\.csv: unparseable timestamp"):
        read(path)
    lines[3001] = lines[3000].replace(",1.5", ",")
    path = write(tmp_path, "many.csv", "\n".join(lines) + "\n")
    whole = read(path)
    assert len(whole.bars) == 4_998
    assert whole.skipped == (
        "row 2002: duplicate open_time 2023-03-02T09:19:00Z",
        "row 3002: missing or non-numeric volume",
    )
    assert stream(path, chunk_rows=1_000) == whole
    assert stream(path, chunk_rows=999) == whole

    data = tmp_path / "many.parquet"
    pl.read_csv(path).write_parquet(data, row_group_size=700)
    assert stream(data, chunk_rows=256) == read(data)


def test_iter_bars_skips_rows_of_an_unsorted_file_with_reasons(tmp_path: Path) -> None:
    text = (
        "open_time,open,high,low,close,volume\n"
        "2023-03-01T00:10:00Z,3,3,3,3,3\n"
        "2023-03-01T00:00:00Z,1,1,1,1,1\n"
        "2023-03-01T00:15:00Z,2,2,2,2,2\n"
        "2023-03-01T00:15:00Z,9,9,9,9,9\n"
        "2023-03-01T00:20:00Z,8,8,8,8,8\n"
    )
    path = write(tmp_path, "unsorted.csv", text)
    assert not is_time_sorted(path)
    assert [bar.close for bar in read(path).bars] == [1.0, 3.0, 2.0, 8.0]
    for chunk_rows in (1, 2, 100):
        result = stream(path, chunk_rows=chunk_rows)
        assert result.interval == "5m"
        assert [bar.close for bar in result.bars] == [3.0, 2.0, 8.0]
        assert result.skipped == (
            "row 3: open_time 2023-03-01T00:00:00Z is before the previous bar's "
            "2023-03-01T00:10:00Z (streaming needs a time-sorted file)",
            "row 5: duplicate open_time 2023-03-01T00:15:00Z",
        )


def test_iter_bars_reports_skipped_rows_as_it_goes(tmp_path: Path) -> None:
    text = "ts,open,high,low,close,volume\n1677628800,1,2,0.5,1.5,1\n1677628860,1,0.5,2,1,1\n"
    text += "1677628920,1,2,0.5,1.5,1\n"
    bars = iter_bars(write(tmp_path, "s.csv", text), venue="v", symbol="s", chunk_rows=1)
    assert bars.interval == "1m"
    assert bars.skipped == []
    iterator = iter(bars)
    next(iterator)
    assert bars.skipped == []
    next(iterator)
    assert [reason.split(":")[0] for reason in bars.skipped] == ["row 3"]
    with pytest.raises(RuntimeError, match="only once"):
        iter(bars)


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("nope.csv", None, "file not found"),
        ("empty.csv", b"\n\n  \n", "empty file"),
        ("header.csv", b"open_time,open,high,low,close,volume\n", "no data rows"),
        ("garbled.csv", bytes(range(256)) * 4, "not a text CSV"),
        ("fake.parquet", b"open_time,open\n1,2\n", "not a Parquet file"),
        ("broken.parquet", b"PAR1" + bytes(range(200)) + b"PAR1", "unreadable"),
        ("notime.csv", b"when,open,high,low,close,volume\nx,1,2,0.5,1,1\n", "no time column"),
        ("narrow.csv", b"1677628800,1,2,0.5\n", "headerless CSV needs 6 columns"),
        ("one.csv", b"ts,open,high,low,close,volume\n1677628800,1,2,0.5,1.5,1\n", "at least 2"),
        (
            "baddate.csv",
            b"date,open,high,low,close,volume\n2023-03-01,1,2,0.5,1,1\nyesterday,1,2,0.5,1,1\n",
            "unparseable timestamp 'yesterday' at row 3",
        ),
    ],
)
def test_iter_bars_refuses_an_unusable_file_before_iterating(
    tmp_path: Path, name: str, content: bytes | None, needle: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    for reader in (read, stream):
        with pytest.raises(SourceError) as info:
            reader(path)
        assert str(info.value).startswith(f"{path}: ")
        assert needle in str(info.value)
        assert "\n" not in str(info.value)
    with pytest.raises(SourceError, match=needle):
        iter_bars(path, venue="v", symbol="s")  # raised by the call, not by iterating


def test_iter_bars_errors_further_on_are_raised_when_reached(tmp_path: Path) -> None:
    rows = [f"2023-03-01T00:0{k}:00Z,1,2,0.5,1.5,1" for k in range(4)]
    header = "open_time,open,high,low,close,volume\n"
    bad = write(tmp_path, "bad.csv", header + "\n".join([*rows, "soon,1,2,0.5,1.5,1"]) + "\n")
    with pytest.raises(SourceError, match="unparseable"):  # within the first INFER_ROWS
        iter_bars(bad, venue="v", symbol="s", chunk_rows=2)
    bars = iter(iter_bars(bad, venue="v", symbol="s", interval="1m", chunk_rows=2))
    assert len([next(bars) for _ in range(4)]) == 4
    with pytest.raises(SourceError, match=r"bad\.csv: unparseable timestamp 'soon' at row 6"):
        next(bars)

    mixed = write(tmp_path, "mixed.csv", header + "\n".join([*rows, "1677629100,1,2,0.5,1,1"]))
    bars = iter(iter_bars(mixed, venue="v", symbol="s", interval="1m", chunk_rows=2))
    with pytest.raises(SourceError, match=r"'1677629100' at row 6 is not ISO-8601 text"):
        list(bars)
    with pytest.raises(SourceError, match=r"mixed\.csv: unparseable timestamp '1677629100'"):
        read(mixed)

    invalid = "2023-03-01T00:0{k}:00Z,1,0.5,2,1.5,1"
    allbad = write(
        tmp_path, "allbad.csv", header + "\n".join(invalid.format(k=k) for k in range(3))
    )
    bars = iter_bars(allbad, venue="v", symbol="s", chunk_rows=1)
    assert bars.interval == "1m"
    with pytest.raises(SourceError, match=r"allbad\.csv: no valid rows \(first problem: row 2"):
        list(bars)


def test_iter_bars_infers_the_interval_from_the_first_rows(tmp_path: Path) -> None:
    minutes = [MARCH_1 + k * MINUTE for k in range(5)]
    hours = [minutes[-1] + k * 60 * MINUTE for k in range(1, 11)]
    lines = [f"{t // 10**9},1,2,0.5,1.5,1" for t in minutes + hours]
    path = write(tmp_path, "slow.csv", "ts,open,high,low,close,volume\n" + "\n".join(lines))
    assert read(path).interval == "1h"
    assert stream(path, chunk_rows=2).interval == "1h"  # within the first INFER_ROWS rows
    assert stream(path, chunk_rows=2).bars == read(path).bars


@real_data
@pytest.mark.parametrize(
    "name",
    [
        "binanceus-1m-2023-03/BTCUSDT.csv",
        "binanceus-1m-2023-03/BTCUSD.csv",
        "kraken-1m-2023q1/BTCUSDC.csv",
        "equities-daily/nvda-1999-2014.csv",
        "equities-daily/orcl-1995-2014.csv",
    ],
)
def test_real_data_streams_like_it_reads(name: str) -> None:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    whole = read(path)
    assert is_time_sorted(path)
    assert stream(path) == whole
    assert stream(path, chunk_rows=4_096) == whole


_ROW = st.tuples(
    st.sampled_from([60, 60, 60, 60, 60, 60, 0, -60, None]),  # to the next open time (s)
    st.sampled_from([None] * 12 + list(range(len(VALUE_COLUMNS)))),  # the column to spoil
    st.sampled_from([None, float("nan"), float("inf"), 0.0, -1.0, 0.5, 3.0]),  # with this
)
_GOOD = {"open": 1.5, "high": 2.0, "low": 1.0, "close": 1.5, "volume": 10.0}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_ROW, min_size=1, max_size=40), st.integers(1, 9))
def test_clean_slices_read_like_row_by_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: list[tuple], slice_rows: int
) -> None:
    """A slice whose rows all become bars takes a whole-column path; whatever the defects and
    wherever the slice boundaries fall, the bars and skipped rows equal the row-by-row path's."""
    monkeypatch.setattr(bar_slices, "_SLICE_ROWS", slice_rows)
    t, times = 1_700_000_000, []
    for step, _, _ in rows:
        times.append(None if step is None else t)
        t += 60 if step is None else step
    columns = {name: [value] * len(rows) for name, value in _GOOD.items()}
    for i, (_, spoiled, value) in enumerate(rows):
        if spoiled is not None:
            columns[VALUE_COLUMNS[spoiled]][i] = value
    frame = pl.DataFrame(
        {"time": times, **columns},
        schema={"time": pl.Int64, **{name: pl.Float64 for name in VALUE_COLUMNS}},
    )
    path = tmp_path / f"bars-{slice_rows}.parquet"
    frame.write_parquet(path)

    def read() -> tuple[list[Bar], list[str]]:
        try:
            stream = iter_bars(path, venue="v", symbol="X/Y", interval="1m", chunk_rows=7)
            return list(stream), stream.skipped
        except SourceError as exc:
            return [], [str(exc)]

    fast = read()
    monkeypatch.setattr(bar_slices, "_every_row_a_bar", lambda part, last_open: False)
    assert fast == read()


def test_clean_slices_take_the_column_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices of 4 over 30 rows with one bad row (13) and a repeated open time at a slice
    boundary (row 17 repeats row 16): the clean slices take the column path, the rest go row
    by row, and the bars and skipped rows are the row-by-row reader's."""
    monkeypatch.setattr(bar_slices, "_SLICE_ROWS", 4)
    times = [1_700_000_000 + 60 * i for i in range(30)]
    times[16] = times[15]  # rows are 1-based: row 17 repeats row 16's open time
    columns = {name: [value] * 30 for name, value in _GOOD.items()}
    columns["low"][12] = 3.0  # row 13: low above high
    path = tmp_path / "bars.parquet"
    pl.DataFrame({"time": times, **columns}).write_parquet(path)
    taken: list[bool] = []
    real = bar_slices._every_row_a_bar

    def counted(part: pl.DataFrame, last_open: int) -> bool:
        taken.append(real(part, last_open))
        return taken[-1]

    monkeypatch.setattr(bar_slices, "_every_row_a_bar", counted)
    stream = iter_bars(path, venue="v", symbol="X/Y", interval="1m")
    bars = list(stream)
    assert taken == [True, True, True, False, False, True, True, True]
    assert [b.open_time for b in bars] == [
        t * 1_000_000_000 for i, t in enumerate(times) if i not in (12, 16)
    ]
    assert stream.skipped == [
        "row 13: invalid bar (high below low)",
        "row 17: duplicate open_time 2023-11-14T22:28:20Z",
    ]
