"""Read OHLCV bar files (CSV or Parquet) into validated ``Bar`` events.

Real files arrive in many layouts, so the layout is detected from the content:

* Headerless CSV whose first row is all numbers: the leading columns are
  ``time,open,high,low,close,volume``. That covers Binance kline dumps (12 columns) and
  Kraken-style files (``epoch_seconds,...,trade_count``); columns after the sixth are ignored.
* CSV with a header, and Parquet: a time column named ``open_time``, ``time``,
  ``timestamp``, ``date``, ``datetime`` or ``ts`` (first match in that order) plus
  ``open``, ``high``, ``low``, ``close`` and ``volume``. Names match case-insensitively with
  spaces read as underscores; other columns (Binance's ``close_time``, Yahoo's ``Adj Close``)
  are ignored.

Timestamps are the bar's OPEN time. They may be ISO-8601 text (an offset or ``Z`` is honoured,
naive text and bare dates are UTC), a Parquet Date/Datetime, or epoch numbers whose unit is
read from each value's magnitude: below 1e11 seconds, below 1e14 milliseconds, below 1e17
microseconds (newer Binance dumps), otherwise nanoseconds.

Row handling:

* Rows are sorted by open time (stable, so the file's order breaks ties).
* ``close_time = open_time + interval`` and ``ts == close_time``. The interval is the one
  given (normalised, so ``"60s"`` becomes ``"1m"``) or the median gap between consecutive
  distinct open times, written in its largest whole unit (``"1m"``, ``"1d"``, ``"1w"``).
* Of rows sharing an open time, the first valid one is kept; the others are skipped.
* Rows with a missing or non-numeric value, or that ``Bar`` rejects (high below low, a price
  not above zero, NaN or infinity), are skipped.
* Every skipped row is reported in ``BarFile.skipped`` as ``"row N: reason"``, where N is the
  1-based line of the file (the header is line 1) or the 1-based Parquet row.
* Blank lines are ignored, gaps are kept as they are (real feeds are sparse), and zero volume
  is valid.

A file that cannot be used at all raises ``SourceError`` with one line naming the file.

Two ways to read:

* ``read_bars`` reads the whole file into a ``BarFile`` and sorts it, as described above.
* ``iter_bars`` streams the file in chunks of rows (a ``BarStream``), so memory stays flat however
  long the file. It shares the format detection, the column and timestamp rules and the row rules
  with ``read_bars``, but it does not sort: streaming needs a time-sorted file. A row whose open
  time is not after the previous bar's (a duplicate, or out of order) is skipped and reported
  like any other bad row, so a sorted file gives exactly the bars and skipped rows of
  ``read_bars``. The interval, when not given, is inferred from the first ``INFER_ROWS`` rows.
  Epoch numbers convert value by value and each chunk parses like the whole file, on one
  condition for CSV: one row per line (no quoted line breaks).

This module is the entry point; the work is in ``formats`` (detecting and reading the file),
``timestamps`` (open times) and ``bar_slices`` (the row rules, slice by slice).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import msgspec
import polars as pl

from contracts.events import Bar
from contracts.intervals import Interval, IntervalError
from services.marketdata.bar_slices import sliced_bars
from services.marketdata.errors import SourceError, first_line
from services.marketdata.formats import POLARS_ERRORS, TIME_COLUMNS, VALUE_COLUMNS, file_tables

__all__ = [
    "CHUNK_ROWS",
    "INFER_ROWS",
    "TIME_COLUMNS",
    "VALUE_COLUMNS",
    "BarFile",
    "BarStream",
    "SourceError",
    "is_time_sorted",
    "iter_bars",
    "read_bars",
]

INFER_ROWS = 200_000
"""``iter_bars`` infers the interval from this many first rows (``read_bars`` from all)."""
CHUNK_ROWS = 65_536
"""Rows per chunk when streaming: memory held by the readers grows with it, speed does not."""


class BarFile(msgspec.Struct, frozen=True):
    """The bars of one file plus the rows dropped on the way, so data quality is visible."""

    bars: tuple[Bar, ...]
    interval: str
    skipped: tuple[str, ...] = ()


def read_bars(path: Path | str, *, venue: str, symbol: str, interval: str | None = None) -> BarFile:
    """Read one bar file whole; see the module docstring for the formats and the row rules."""
    path = Path(path)
    step = _given_step(interval, path)
    tables = list(file_tables(path, chunk_rows=None))
    try:
        table = pl.concat(tables).sort("time", nulls_last=True, maintain_order=True)
    except POLARS_ERRORS as exc:
        raise SourceError(f"{path}: unreadable: {first_line(exc)}") from exc
    if table.height == 0:
        raise SourceError(f"{path}: no data rows")
    step, label = _interval(step, table["time"], path)
    problems: list[tuple[int, str]] = []
    slices = sliced_bars(
        [table], venue, symbol, label, step, lambda row, why: problems.append((row, why))
    )
    bars = tuple(itertools.chain.from_iterable(slices))
    problems.sort(key=lambda problem: problem[0])
    skipped = tuple(f"row {row}: {why}" for row, why in problems)
    if not bars:
        raise SourceError(f"{path}: no valid rows (first problem: {skipped[0]})")
    return BarFile(bars=bars, interval=label, skipped=skipped)


def iter_bars(
    path: Path | str,
    *,
    venue: str,
    symbol: str,
    interval: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> BarStream:
    """Stream one time-sorted bar file in chunks of ``chunk_rows`` rows; memory stays flat.

    Formats and row rules are those of ``read_bars``, except that the file is not sorted: a
    row whose open time is not after the previous bar's is skipped (see the module docstring).
    The file is opened, checked and its interval inferred here, so a file that cannot be used
    at all raises ``SourceError`` now; bad rows further on are reported as they are reached.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    path = Path(path)
    step = _given_step(interval, path)
    tables = file_tables(path, chunk_rows)
    head: list[pl.DataFrame] = []
    rows = 0
    for table in tables:
        head.append(table)
        rows += table.height
        if rows > 0 and (step is not None or rows >= INFER_ROWS):
            break
    if rows == 0:
        raise SourceError(f"{path}: no data rows")
    times = pl.concat([table["time"] for table in head]).head(INFER_ROWS)
    step, label = _interval(step, times, path)
    return BarStream(path, head, tables, venue=venue, symbol=symbol, interval=label, step=step)


def is_time_sorted(path: Path | str, *, chunk_rows: int = CHUNK_ROWS) -> bool:
    """Whether the file's open times never decrease (empty ones aside), read chunk by chunk.

    Such a file gives ``iter_bars`` exactly the bars and skipped rows of ``read_bars``.
    """
    path = Path(path)
    last: int | None = None
    for table in file_tables(path, chunk_rows, values=False):
        times = table["time"].drop_nulls()
        if times.len() == 0:
            continue
        if (last is not None and times[0] < last) or not times.is_sorted():
            return False
        last = times[-1]
    return True


class BarStream:
    """The bars of one file in time order, read chunk by chunk; iterate it once.

    ``interval`` is known before iterating; ``skipped`` grows as rows are reached, with the
    same ``"row N: reason"`` entries as ``BarFile.skipped``. A file without a single valid row
    raises ``SourceError`` when the iteration reaches its end.
    """

    def __init__(
        self,
        path: Path,
        head: list[pl.DataFrame],
        rest: Iterator[pl.DataFrame],
        *,
        venue: str,
        symbol: str,
        interval: str,
        step: int,
    ) -> None:
        self.path = path
        self.interval = interval
        self.skipped: list[str] = []
        self._head = head
        self._rest = rest
        self._bar = (venue, symbol, interval, step)
        self._started = False

    def __iter__(self) -> Iterator[Bar]:
        """The flattened slices, not a generator around them: a layer costs every bar a resume."""
        if self._started:
            raise RuntimeError(f"{self.path}: a BarStream can be iterated only once")
        self._started = True
        venue, symbol, interval, step = self._bar
        chunks = self._chunks()
        slices = sliced_bars(chunks, venue, symbol, interval, step, self._report, self._none_valid)
        return itertools.chain.from_iterable(slices)

    def _none_valid(self) -> None:
        raise SourceError(f"{self.path}: no valid rows (first problem: {self.skipped[0]})")

    def _chunks(self) -> Iterator[pl.DataFrame]:
        while self._head:
            yield self._head.pop(0)  # let go of each chunk once it is read
        yield from self._rest

    def _report(self, row: int, why: str) -> None:
        self.skipped.append(f"row {row}: {why}")


def _given_step(interval: str | None, path: Path) -> int | None:
    """Length of the interval the caller gave, checked before the file is read; None when
    it is to be inferred."""
    if interval is None:
        return None
    try:
        return Interval.parse(interval).ns
    except IntervalError as exc:
        raise SourceError(f"{path}: {exc}") from None


def _interval(step: int | None, times: pl.Series, path: Path) -> tuple[int, str]:
    """(length, label) of the given interval, or of the one inferred from the open times."""
    if step is None:
        step = _infer_step(times, path)
    label = Interval.from_ns(step)
    if label is None:
        raise SourceError(f"{path}: interval of {step} ns is not a whole number of seconds")
    return step, str(label)


def _infer_step(times: pl.Series, path: Path) -> int:
    """Median gap between distinct open times: robust to gaps, weekends and holidays."""
    distinct = times.drop_nulls().unique().sort()
    if distinct.len() < 2:
        raise SourceError(
            f"{path}: need at least 2 distinct open times to infer the interval; pass interval="
        )
    gaps = distinct.diff().drop_nulls().sort()
    return int(gaps[(gaps.len() - 1) // 2])
