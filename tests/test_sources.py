"""Bar file readers: every supported layout, the row rules, and one-line errors on bad files."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from contracts.events import Bar
from services.marketdata.sources import BarFile, SourceError, interval_ns, read_bars

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
def test_interval_ns(text: str, expected: int) -> None:
    assert interval_ns(text) == expected


@pytest.mark.parametrize("text", ["", "m", "0m", "1M", "1y", "1.5h", " 1m", "1 m", "-1m", "1mo"])
def test_interval_ns_rejects(text: str) -> None:
    with pytest.raises(SourceError, match="unsupported interval"):
        interval_ns(text)


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
