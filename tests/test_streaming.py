"""Streaming replay input: ``market_events`` reads files lazily, in the order the whole-file
reader gave, and a backtest's memory does not grow with the bars it reads.

The memory tests run each backtest in a fresh Python and read its peak RSS from
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` once it has exited. A small launcher process
starts it and reads the figure: Linux starts a new program's peak at the RSS of the process that
spawned it (the test session, which may have grown to hundreds of MB generating the data), and
``RUSAGE_CHILDREN`` of the session would include every subprocess any test has started.
"""

from __future__ import annotations

import heapq
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contracts.events import Bar
from contracts.intervals import interval_ns
from eventstore.errors import KeelError
from replay import market
from replay.market import DataSource, market_events
from services.marketdata.sources import SourceError, read_bars
from services.marketdata.synthetic import SyntheticMarket

ROOT = Path(__file__).resolve().parents[1]
MINUTE = interval_ns("1m")
START = 1_700_000_000_000_000_000 // MINUTE * MINUTE  # SyntheticMarket snaps to the interval
SCHEMA = pa.schema(
    [
        ("open_time", pa.timestamp("ns", "UTC")),
        *((name, pa.float64()) for name in ("open", "high", "low", "close", "volume")),
    ]
)


def write_parquet(path: Path, rows: int, segment: int = 200_000) -> Path:
    """A 1m market of ``rows`` bars, generated and written a segment (row group) at a time."""
    with pq.ParquetWriter(path, SCHEMA) as writer:
        for first in range(0, rows, segment):
            count = min(segment, rows - first)
            bars = list(
                SyntheticMarket(
                    symbols=("BTC/USDT",),
                    bars=count,
                    seed=first,
                    start_ns=START + first * MINUTE,
                ).generate()
            )
            columns = {
                "open_time": pa.array([b.open_time for b in bars], pa.timestamp("ns", "UTC")),
                **{
                    name: pa.array([getattr(b, name) for b in bars], pa.float64())
                    for name in ("open", "high", "low", "close", "volume")
                },
            }
            writer.write_table(pa.table(columns, schema=SCHEMA))
    return path


def write_csv(path: Path, bars: list[Bar]) -> Path:
    lines = ["open_time,open,high,low,close,volume"]
    lines += [
        f"{b.open_time},{b.open!r},{b.high!r},{b.low!r},{b.close!r},{b.volume!r}" for b in bars
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def whole_file_events(
    sources: list[DataSource], start: int | None = None, end: int | None = None
) -> list[Bar]:
    """What market_events returned before it streamed: every file read whole, then merged."""
    lo, hi = start or -1, end if end is not None else 1 << 63
    loaded = []
    for source in sources:
        path = Path(source.location)
        bars = read_bars(path, venue=source.venue, symbol=source.symbol or path.stem).bars
        loaded.append([b for b in bars if lo <= b.open_time < hi])
    return list(heapq.merge(*loaded, key=lambda bar: bar.ts))


# --- market_events ------------------------------------------------------------------------------


def test_market_events_match_the_whole_file_merge(tmp_path: Path) -> None:
    bars = list(SyntheticMarket(symbols=("AAA/USDT", "BBB/USDT"), bars=700, seed=3).generate())
    a = write_csv(tmp_path / "a.csv", [b for b in bars if b.symbol == "AAA/USDT"])
    b = write_parquet(tmp_path / "b.parquet", 900, segment=256)
    five = list(SyntheticMarket(symbols=("CCC/USDT",), interval="5m", bars=150, seed=3).generate())
    c = write_csv(tmp_path / "c.csv", five)
    unsorted = write_csv(tmp_path / "u.csv", [x for x in bars if x.symbol == "BBB/USDT"][::-1])
    sources = [
        DataSource(str(c)),
        DataSource(str(a), symbol="AAA/USDT"),
        DataSource(str(b)),
        DataSource(str(unsorted), symbol="UUU/USDT"),
    ]
    opens = sorted({x.open_time for x in bars})
    for window in [(None, None), (opens[100], opens[400]), (None, opens[5]), (opens[650], None)]:
        events = market_events(sources, None, *window)
        assert isinstance(events, Iterator)
        merged = list(events)
        assert merged == whole_file_events(sources, *window)
        assert [x.ts for x in merged] == sorted(x.ts for x in merged)
    assert {x.symbol for x in merged} == {"c", "AAA/USDT", "b", "UUU/USDT"}


def test_market_events_raise_when_the_window_is_empty(tmp_path: Path) -> None:
    data = write_parquet(tmp_path / "bars.parquet", 100)
    with pytest.raises(KeelError, match="no bars in the requested data and time range"):
        market_events([DataSource(str(data))], None, START + 10**15)
    with pytest.raises(KeelError, match="no bars in the requested data and time range"):
        market_events([DataSource(str(data))], None, START + 50 * MINUTE, START + 50 * MINUTE)
    with pytest.raises(KeelError, match="no such file"):
        market_events([DataSource(str(data)), DataSource(str(tmp_path / "nope.csv"))])
    with pytest.raises(KeelError, match="changed since the run was recorded"):
        market_events([DataSource(str(data), sha256="0" * 64)])
    (tmp_path / "bad.csv").write_text("when,open\n1,2\n")
    with pytest.raises(SourceError, match="no time column"):
        market_events([DataSource(str(data)), DataSource(str(tmp_path / "bad.csv"))])


def test_market_events_stop_reading_a_file_at_the_window_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_parquet(tmp_path / "bars.parquet", 5_000, segment=1_000)
    pulled = []
    iter_bars = market.iter_bars

    def counting(*args: object, **kwargs: object) -> Iterator[Bar]:
        for bar in iter_bars(*args, **kwargs):  # type: ignore[arg-type]
            pulled.append(bar)
            yield bar

    monkeypatch.setattr(market, "iter_bars", counting)
    events = market_events([DataSource(str(data))], None, START + 10 * MINUTE, START + 20 * MINUTE)
    assert len(list(events)) == 10
    assert len(pulled) == 21  # up to the first bar at or after the end, not the 5,000


# --- memory -------------------------------------------------------------------------------------

BACKTEST = """
import sys
import msgspec
from replay.backtest import BacktestSpec, run_backtest
from replay.market import DataSource
from services.config import KeelConfig

params = {"kind": "ema", "fast": 10, "slow": 30, "mode": "long_short", "qty": 1}
config = msgspec.convert(
    {"strategies": [{"name": "ma_cross", "instance": "ma", "params": params}]}, KeelConfig
)
result = run_backtest(BacktestSpec(config=config, data=(DataSource(sys.argv[1]),)))
print(result.bars, result.fills)
"""

READ_ONLY = """
import sys
from replay.market import DataSource, market_events

print(sum(1 for _ in market_events([DataSource(sys.argv[1])])))
"""


LAUNCHER = """
import resource, subprocess, sys

child = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(child.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(child.stdout + child.stderr, end="")
"""


def peak_rss_mb(code: str, *args: str) -> tuple[float, str]:
    """Run ``code`` in a fresh Python; (its peak RSS in MB, what it printed)."""
    launched = subprocess.run(
        [sys.executable, "-c", LAUNCHER, sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    status, output = launched.stdout.split("\n", 1)
    returncode, kilobytes = map(int, status.split())
    assert returncode == 0, output
    return kilobytes / 1024, output  # Linux reports kilobytes


@pytest.fixture(scope="module")
def markets(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("markets")
    return {rows: write_parquet(folder / f"bars-{rows}.parquet", rows) for rows in (LARGE, SMALL)}


LARGE, SMALL = 1_000_000, 100_000


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in kilobytes on Linux only")
def test_backtest_memory_stays_flat_as_bars_grow(markets: dict[int, Path]) -> None:
    small, small_out = peak_rss_mb(BACKTEST, str(markets[SMALL]))
    large, large_out = peak_rss_mb(BACKTEST, str(markets[LARGE]))
    assert int(small_out.split()[0]) == SMALL
    assert int(large_out.split()[0]) == LARGE
    print(f"peak RSS: {small:.0f} MB for {SMALL:,} bars, {large:.0f} MB for {LARGE:,} bars")
    assert large < 400, f"{large:.0f} MB for {LARGE:,} bars"
    # The input streams; what still grows is the run's own record (RunRecorder keeps the equity
    # curve, 24 bytes a bar, and every fill). Reading every bar into memory first cost about
    # 600 bytes a bar here (1,340 MB for 2,000,000 bars).
    per_bar = (large - small) * 2**20 / (LARGE - SMALL)
    assert per_bar < 120, f"{per_bar:.0f} bytes per extra bar ({small:.0f} -> {large:.0f} MB)"


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in kilobytes on Linux only")
def test_reading_the_market_memory_is_flat(markets: dict[int, Path]) -> None:
    small, small_out = peak_rss_mb(READ_ONLY, str(markets[SMALL]))
    large, large_out = peak_rss_mb(READ_ONLY, str(markets[LARGE]))
    assert (int(small_out), int(large_out)) == (SMALL, LARGE)
    print(f"peak RSS reading: {small:.0f} MB for {SMALL:,} bars, {large:.0f} MB for {LARGE:,}")
    assert large < 1.5 * small, f"{small:.0f} MB for {SMALL:,} bars, {large:.0f} MB for {LARGE:,}"
