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
"""

from __future__ import annotations

import array
import codecs
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from contracts.events import Bar

TIME_COLUMNS = ("open_time", "time", "timestamp", "date", "datetime", "ts")
VALUE_COLUMNS = ("open", "high", "low", "close", "volume")

_UNIT_NS = {
    "w": 7 * 86_400_000_000_000,
    "d": 86_400_000_000_000,
    "h": 3_600_000_000_000,
    "m": 60_000_000_000,
    "s": 1_000_000_000,
}
_INTERVAL = re.compile(r"([1-9][0-9]*)([smhdw])")
_SNIFF_BYTES = 65_536
_PARQUET_MAGIC = b"PAR1"
_POLARS_ERRORS = (
    pl.exceptions.PolarsError,
    pl.exceptions.PanicException,
    pa.ArrowException,
    OSError,
)
_SLICE_ROWS = 16_384
_CSV_CHUNK_BYTES = 4 << 20
_PARQUET_BUFFER_BYTES = 1 << 20
_BEFORE_ANY_TIME = -(1 << 64)  # below every Int64 open time: the first row is never "late"
_MIN_INT64 = -(1 << 63)
INFER_ROWS = 200_000
CHUNK_ROWS = 65_536
"""Rows per chunk when streaming: memory held by the readers grows with it, speed does not."""
"""``iter_bars`` infers the interval from this many first rows (``read_bars`` from all)."""


class SourceError(ValueError):
    """A bar file that cannot be used, explained in one line that names the file."""


class BarFile(msgspec.Struct, frozen=True):
    """The bars of one file plus the rows dropped on the way, so data quality is visible."""

    bars: tuple[Bar, ...]
    interval: str
    skipped: tuple[str, ...] = ()


def interval_ns(interval: str) -> int:
    """Length of an interval such as ``"1m"`` or ``"4h"``; units are s, m, h, d and w."""
    match = _INTERVAL.fullmatch(interval)
    if match is None:
        raise SourceError(
            f"unsupported interval {interval!r}: expected a number and a unit s/m/h/d/w, "
            "e.g. '1m' or '1d'"
        )
    return int(match.group(1)) * _UNIT_NS[match.group(2)]


def format_interval(nanoseconds: int) -> str | None:
    """Shortest interval string for a length, or None when it is not whole seconds."""
    if nanoseconds <= 0:
        return None
    for unit, size in _UNIT_NS.items():
        if nanoseconds % size == 0:
            return f"{nanoseconds // size}{unit}"
    return None


def read_bars(path: Path | str, *, venue: str, symbol: str, interval: str | None = None) -> BarFile:
    """Read one bar file whole; see the module docstring for the formats and the row rules."""
    path = Path(path)
    step = None if interval is None else interval_ns(interval)
    tables = list(_tables(path, chunk_rows=None))
    try:
        table = pl.concat(tables).sort("time", nulls_last=True, maintain_order=True)
    except _POLARS_ERRORS as exc:
        raise SourceError(f"{path}: unreadable: {_first_line(exc)}") from exc
    if table.height == 0:
        raise SourceError(f"{path}: no data rows")
    step, label = _interval(step, table["time"], path)
    problems: list[tuple[int, str]] = []
    bars = tuple(
        _bars([table], venue, symbol, label, step, lambda row, why: problems.append((row, why)))
    )
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
    step = None if interval is None else interval_ns(interval)
    tables = _tables(path, chunk_rows)
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
    for table in _tables(path, chunk_rows, values=False):
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
        """``_bars`` itself, not a generator around it: a layer costs every bar a resume."""
        if self._started:
            raise RuntimeError(f"{self.path}: a BarStream can be iterated only once")
        self._started = True
        venue, symbol, interval, step = self._bar
        chunks = self._chunks()
        return _bars(chunks, venue, symbol, interval, step, self._report, self._none_valid)

    def _none_valid(self) -> None:
        raise SourceError(f"{self.path}: no valid rows (first problem: {self.skipped[0]})")

    def _chunks(self) -> Iterator[pl.DataFrame]:
        while self._head:
            yield self._head.pop(0)  # let go of each chunk once it is read
        yield from self._rest

    def _report(self, row: int, why: str) -> None:
        self.skipped.append(f"row {row}: {why}")


def _interval(step: int | None, times: pl.Series, path: Path) -> tuple[int, str]:
    """(length, label) of the given interval, or of the one inferred from the open times."""
    if step is None:
        step = _infer_step(times, path)
    label = format_interval(step)
    if label is None:
        raise SourceError(f"{path}: interval of {step} ns is not a whole number of seconds")
    return step, label


def _tables(path: Path, chunk_rows: int | None, *, values: bool = True) -> Iterator[pl.DataFrame]:
    """The file in file order as tables of ``row`` (Int64), ``time`` (Int64 nanoseconds UTC,
    null where empty) and the five value columns (Float64, null where not a number); the whole
    file is one table when ``chunk_rows`` is None. With ``values=False`` only ``row`` and
    ``time``, and a Parquet file reads only its time column."""
    times = _TimeParser(path)
    try:
        for raw in _raw_chunks(path, chunk_rows, values=values):
            rows = raw["row"].cast(pl.Int64)
            floats = [_floats(raw[name]) for name in VALUE_COLUMNS] if values else []
            yield pl.DataFrame([rows, times(raw["time"], rows), *floats])
    except _POLARS_ERRORS as exc:
        raise SourceError(f"{path}: unreadable: {_first_line(exc)}") from exc


def _raw_chunks(path: Path, chunk_rows: int | None, *, values: bool) -> Iterator[pl.DataFrame]:
    """Frames of columns ``row``, ``time`` and the five value columns, raw types kept (a
    Parquet file without the value columns when ``values`` is False)."""
    if not path.exists():
        raise SourceError(f"{path}: file not found")
    if not path.is_file():
        raise SourceError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: empty file")
    with path.open("rb") as handle:
        is_parquet = handle.read(len(_PARQUET_MAGIC)) == _PARQUET_MAGIC
    if is_parquet:
        yield from _parquet_chunks(path, chunk_rows, values=values)
    elif path.suffix.lower() == ".parquet":
        raise SourceError(f"{path}: not a Parquet file (no PAR1 signature)")
    else:
        yield from _csv_chunks(path, chunk_rows)


def _parquet_chunks(path: Path, chunk_rows: int | None, *, values: bool) -> Iterator[pl.DataFrame]:
    """Record batches of the needed columns; rows are numbered from 1."""
    # Without pre_buffer=False, pyarrow's read-ahead buffers grew with the file as it streamed;
    # without a buffer_size it reads each column chunk whole (~8 MB per million rows each).
    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=_PARQUET_BUFFER_BYTES)
    try:
        time_column, value_columns = _column_names(parquet.schema_arrow.names, path)
        if not values:
            value_columns = ()
        columns = [time_column, *value_columns]
        batches: Iterable[pa.RecordBatch | pa.Table] = (
            [parquet.read(columns=columns)]
            if chunk_rows is None
            else parquet.iter_batches(batch_size=chunk_rows, columns=columns, use_threads=False)
        )
        first_row = 1
        for batch in batches:
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            yield _picked(frame, time_column, value_columns, first_row, drop_blank=True)
            first_row += batch.num_rows
    finally:
        parquet.close()


def _csv_chunks(path: Path, chunk_rows: int | None) -> Iterator[pl.DataFrame]:
    """Runs of whole lines parsed with the file's header; one row per line.

    Each run is parsed as the header line followed by the run's lines, so every chunk gets the
    columns a whole-file parse would (a headerless file gets a made-up header naming its first
    six columns). Rows are numbered by line: the header is line 1.
    """
    fields = [field.strip().strip('"') for field in _first_text_line(path).split(",")]
    headerless = all(_is_number(field) for field in fields)
    if headerless and len(fields) < len(VALUE_COLUMNS) + 1:
        raise SourceError(
            f"{path}: headerless CSV needs 6 columns (time,open,high,low,close,volume), "
            f"found {len(fields)}"
        )
    with path.open("rb") as handle:
        if headerless:
            names = ("time", *VALUE_COLUMNS, *(f"column_{i}" for i in range(6, len(fields))))
            header = ",".join(names).encode() + b"\n"
            if handle.read(len(codecs.BOM_UTF8)) != codecs.BOM_UTF8:
                handle.seek(0)  # polars drops a BOM only at the start of what it parses
            first_row = 1
        else:
            header = handle.readline()
            first_row = 2
        runs = [(handle.read(), 0)] if chunk_rows is None else _line_runs(handle, chunk_rows)
        columns: tuple[str, tuple[str, ...]] | None = None
        for run, lines in itertools.chain(runs, [(b"", 0)]):
            if not run and columns is not None:
                return  # the empty run only stands for a file with no lines after the header
            raw = pl.read_csv(header + run, infer_schema=False, truncate_ragged_lines=True)
            if headerless:
                columns = ("time", VALUE_COLUMNS)
            elif columns is None:
                columns = _column_names(raw.columns, path)
            yield _picked(raw, *columns, first_row, drop_blank=not headerless)
            first_row += lines


def _line_runs(handle: BinaryIO, chunk_rows: int) -> Iterator[tuple[bytes, int]]:
    """The rest of a file as (whole lines, how many), at most chunk_rows lines and about
    _CSV_CHUNK_BYTES at a time (polars needs far more memory than the text it parses)."""
    data, start, eof = b"", 0, False
    while True:
        if eof and not data.endswith(b"\n") and start < len(data):
            data += b"\n"  # the last line, unterminated
        whole = data.rfind(b"\n", start) + 1
        while start < whole:
            end, lines = whole, data.count(b"\n", start, whole)
            if lines > chunk_rows:
                end, lines = start, chunk_rows
                for _ in range(chunk_rows):
                    end = data.index(b"\n", end) + 1
            yield data[start:end], lines
            start = end
        if eof:
            return
        block = handle.read(_CSV_CHUNK_BYTES)
        eof = not block
        data, start = data[start:] + block, 0


def _first_text_line(path: Path) -> str:
    """First line of a CSV, refusing binary or non-UTF-8 content before polars sees it."""
    with path.open("rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    try:
        text = decoder.decode(head, final=False)
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not a text CSV (invalid UTF-8 at byte {exc.start})") from exc
    if "\x00" in text:
        raise SourceError(f"{path}: not a text CSV (binary content)")
    if not text.strip():
        raise SourceError(f"{path}: empty file")
    return text.splitlines()[0]


def _column_names(names: Sequence[str], path: Path) -> tuple[str, tuple[str, ...]]:
    """(time column, value columns in VALUE_COLUMNS order), saying which one is missing."""
    by_name: dict[str, str] = {}
    for column in names:
        by_name.setdefault(column.strip().lstrip("\ufeff").lower().replace(" ", "_"), column)
    time_column = next((by_name[name] for name in TIME_COLUMNS if name in by_name), None)
    if time_column is None:
        found = ", ".join(names[:12]) or "none"
        raise SourceError(
            f"{path}: no time column (expected one of {', '.join(TIME_COLUMNS)}; found {found})"
        )
    missing = [name for name in VALUE_COLUMNS if name not in by_name]
    if missing:
        listed = ", ".join(repr(name) for name in missing)
        raise SourceError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {listed}")
    return time_column, tuple(by_name[name] for name in VALUE_COLUMNS)


def _picked(
    raw: pl.DataFrame,
    time_column: str,
    value_columns: tuple[str, ...],
    first_row: int,
    *,
    drop_blank: bool,
) -> pl.DataFrame:
    """The time and value columns under their standard names, rows numbered from first_row;
    with drop_blank, rows where every one of them is empty are dropped. No value columns:
    the time alone."""
    names = VALUE_COLUMNS if value_columns else ()
    picked = raw.select(
        pl.col(time_column).alias("time"),
        *(pl.col(column).alias(name) for column, name in zip(value_columns, names, strict=True)),
    ).with_row_index("row", offset=first_row)
    if drop_blank:
        picked = picked.filter(~pl.all_horizontal(pl.exclude("row").is_null()))
    return picked


class _TimeParser:
    """Open times as Int64 nanoseconds UTC; nulls only where the cell was empty.

    Epoch numbers are converted value by value, so a file read in chunks gets the same times
    as a file read whole. A text column holds epoch numbers or ISO-8601 throughout: the kind
    of the first chunk is remembered, and a later chunk of the other kind is an error.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.text_kind: str | None = None

    def __call__(self, column: pl.Series, rows: pl.Series) -> pl.Series:
        dtype = column.dtype
        if isinstance(dtype, pl.Datetime):
            if dtype.time_zone is not None:
                column = column.dt.convert_time_zone("UTC")
            return column.dt.epoch("ns").alias("time")
        if dtype == pl.Date:
            return column.cast(pl.Datetime("ns")).dt.epoch("ns").alias("time")
        if dtype.is_integer():
            return _epoch_ns(column.cast(pl.Int64))
        if dtype.is_float():
            return self._usable(_float_epoch_ns(column), column, rows)
        if dtype != pl.String:
            raise SourceError(f"{self.path}: time column has unsupported type {dtype}")
        text = column.str.strip_chars()
        text = text.set(text == "", None)
        as_float = text.cast(pl.Float64, strict=False)
        numeric = as_float.null_count() == text.null_count()
        self._same_kind("epoch numbers" if numeric else "ISO-8601 text", text, as_float, rows)
        if numeric:
            both = pl.DataFrame(
                {
                    "exact": _epoch_ns(text.cast(pl.Int64, strict=False)),
                    "float": _float_epoch_ns(as_float),
                }
            )
            times = both.select(pl.coalesce("exact", "float").alias("time"))["time"]
            return self._usable(times, text, rows)
        parsed = text.str.to_datetime(time_unit="ns", time_zone="UTC", strict=False)
        bad = parsed.is_null() & text.is_not_null()
        if bad.any():
            index = bad.arg_true()[0]
            raise SourceError(
                f"{self.path}: unparseable timestamp {text[index]!r} at row {rows[index]} "
                f"(expected ISO-8601 or epoch numbers)"
            )
        return parsed.dt.epoch("ns").alias("time")

    def _same_kind(self, kind: str, text: pl.Series, as_float: pl.Series, rows: pl.Series) -> None:
        """Remember the first chunk's kind of text timestamps; refuse a chunk of the other."""
        if text.null_count() == text.len():
            return
        if self.text_kind is None:
            self.text_kind = kind
        elif kind != self.text_kind:
            other = (
                as_float.is_null() if self.text_kind == "epoch numbers" else as_float.is_not_null()
            )
            index = (other & text.is_not_null()).arg_true()[0]
            raise SourceError(
                f"{self.path}: timestamp {text[index]!r} at row {rows[index]} is not "
                f"{self.text_kind} like the rows before it"
            )

    def _usable(self, times: pl.Series, cells: pl.Series, rows: pl.Series) -> pl.Series:
        """Refuse epoch numbers that are not a time (NaN, infinite, out of range)."""
        bad = times.is_null() & cells.is_not_null()
        if bad.any():
            index = bad.arg_true()[0]
            raise SourceError(
                f"{self.path}: unusable timestamp {cells[index]!r} at row {rows[index]}"
            )
        return times


def _epoch_ns(seconds_or_finer: pl.Series) -> pl.Series:
    """Integer epochs to nanoseconds, choosing the unit per value by magnitude."""
    frame = pl.DataFrame({"t": seconds_or_finer})
    return frame.select(_scaled(pl.col("t")).alias("time"))["time"]


def _scaled(epoch: pl.Expr) -> pl.Expr:
    size = epoch.abs()
    return (
        pl.when(size < 10**11)
        .then(epoch * 1_000_000_000)
        .when(size < 10**14)
        .then(epoch * 1_000_000)
        .when(size < 10**17)
        .then(epoch * 1_000)
        .otherwise(epoch)
    )


def _float_epoch_ns(epochs: pl.Series) -> pl.Series:
    """Float epochs to nanoseconds, per value: whole values go through integers to stay exact.

    Values that are no time (NaN, infinite, beyond Int64) become null."""
    frame = pl.DataFrame({"t": epochs})
    epoch = pl.col("t")
    size = epoch.abs()
    factor = (
        pl.when(size < 1e11)
        .then(1e9)
        .when(size < 1e14)
        .then(1e6)
        .when(size < 1e17)
        .then(1e3)
        .otherwise(1.0)
    )
    whole = epoch.is_finite() & (epoch == epoch.floor())
    exact = _scaled(epoch.cast(pl.Int64, strict=False))
    rounded = (epoch * factor).round().cast(pl.Int64, strict=False)
    return frame.select(
        pl.when(whole).then(exact).when(epoch.is_finite()).then(rounded).alias("time")
    )["time"]


def _floats(column: pl.Series) -> pl.Series:
    """A value column as Float64; text that is not a number becomes null (a skipped row)."""
    if column.dtype == pl.String:
        column = column.str.strip_chars()
    return column.cast(pl.Float64, strict=False)


def _infer_step(times: pl.Series, path: Path) -> int:
    """Median gap between distinct open times: robust to gaps, weekends and holidays."""
    distinct = times.drop_nulls().unique().sort()
    if distinct.len() < 2:
        raise SourceError(
            f"{path}: need at least 2 distinct open times to infer the interval; pass interval="
        )
    gaps = distinct.diff().drop_nulls().sort()
    return int(gaps[(gaps.len() - 1) // 2])


def _bars(
    tables: Iterable[pl.DataFrame],
    venue: str,
    symbol: str,
    interval: str,
    step: int,
    report: Callable[[int, str], None],
    none_valid: Callable[[], None] | None = None,
) -> Iterator[Bar]:
    """Bars from tables in file order (read_bars passes one sorted table): each bar's open time
    must be after the previous bar's, and every row that does not become a bar is reported.
    ``none_valid`` is called at the end when no row became a bar.

    The bars of a slice are built in one list and the lists flattened by ``itertools``: a
    Python generator in between would cost every bar a suspend and resume.
    """
    return itertools.chain.from_iterable(
        _slices(tables, venue, symbol, interval, step, report, none_valid)
    )


def _slices(
    tables: Iterable[pl.DataFrame],
    venue: str,
    symbol: str,
    interval: str,
    step: int,
    report: Callable[[int, str], None],
    none_valid: Callable[[], None] | None,
) -> Iterator[list[Bar]]:
    """The bars of each slice of ``_SLICE_ROWS`` rows (per-row polars access is slow, and a
    whole chunk as Python objects would be large)."""
    series = (venue, symbol, interval)
    last_open = _BEFORE_ANY_TIME
    for table in tables:
        for part in table.iter_slices(_SLICE_ROWS):
            if _every_row_a_bar(part, last_open):
                # The common case, with nothing to report: no per-row checks here (Bar's own
                # still run), and the columns as arrays, which the garbage collector does not
                # walk the way it walks lists of 16,384 floats at every collection (bars are
                # untracked too).
                times = _array("q", part["time"])
                values = [_array("d", part[name]) for name in VALUE_COLUMNS]
                yield [
                    Bar(
                        venue,
                        symbol,
                        interval,
                        open_time,
                        (close_time := open_time + step),  # a Python int: never wraps
                        open_,
                        high,
                        low,
                        close,
                        volume,
                        ts=close_time,
                    )
                    for open_time, open_, high, low, close, volume in zip(
                        times, *values, strict=True
                    )
                ]
                last_open = times[-1]
                continue
            columns = [part[name].to_list() for name in ("row", "time", *VALUE_COLUMNS)]
            bars: list[Bar] = []
            for row, open_time, open_, high, low, close, volume in zip(*columns, strict=True):
                # A good row goes straight into Bar, whose own checks refuse a missing value
                # (TypeError) or a bad one (ValueError); only a refused row pays for the why.
                bar = None
                try:
                    if open_time > last_open:
                        close_time = open_time + step
                        bar = Bar(
                            venue,
                            symbol,
                            interval,
                            open_time,
                            close_time,
                            open_,
                            high,
                            low,
                            close,
                            volume,
                            ts=close_time,
                        )
                except (TypeError, ValueError):
                    pass
                if bar is None:
                    values = (open_, high, low, close, volume)
                    report(row, _refusal(open_time, values, last_open, step, series))
                    continue
                last_open = open_time
                bars.append(bar)
            yield bars
    if last_open == _BEFORE_ANY_TIME and none_valid is not None:
        none_valid()


def _every_row_a_bar(part: pl.DataFrame, last_open: int) -> bool:
    """Whether every row of the slice passes the row rules: open times present and rising
    from ``last_open``, values present, finite, prices above zero, low <= high, volume >= 0
    (the checks of ``Bar`` and of ``_bars``, on whole columns)."""
    time = pl.col("time")
    low, high, volume = pl.col("low"), pl.col("high"), pl.col("volume")
    finite = [pl.col(name).is_finite() for name in VALUE_COLUMNS]
    ok = part.select(
        pl.all_horizontal(
            time.is_not_null(),
            time > pl.coalesce(time.shift(1), pl.lit(max(last_open, _MIN_INT64), pl.Int64)),
            *finite,
            pl.min_horizontal("open", "high", "low", "close") > 0,
            low <= high,
            volume >= 0,
        )
        .fill_null(False)
        .all()
    ).item()
    return bool(ok)


def _array(typecode: str, column: pl.Series) -> array.array:
    out = array.array(typecode)
    out.frombytes(column.to_numpy().tobytes())
    return out


def _refusal(
    open_time: int | None,
    values: tuple[float | None, ...],
    last_open: int,
    step: int,
    series: tuple[str, str, str],
) -> str:
    """Why a row does not become a bar, checked in this order: timestamp, values, time order,
    the bar's own rules."""
    if open_time is None:
        return "missing timestamp"
    if None in values:
        names = ", ".join(n for n, v in zip(VALUE_COLUMNS, values, strict=True) if v is None)
        return f"missing or non-numeric {names}"
    if open_time == last_open:
        return f"duplicate open_time {_iso(open_time)}"
    if open_time < last_open:
        return (
            f"open_time {_iso(open_time)} is before the previous bar's "
            f"{_iso(last_open)} (streaming needs a time-sorted file)"
        )
    try:
        Bar(*series, open_time, open_time + step, *values, ts=open_time + step)
    except ValueError as exc:
        return f"invalid bar ({exc})"
    raise AssertionError("a refused row passed Bar's checks")


def _iso(nanoseconds: int) -> str:
    """UTC ISO-8601 text for a nanosecond time, e.g. ``2023-03-01T00:05:00Z``."""
    seconds, fraction = divmod(nanoseconds, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{fraction:09d}".rstrip("0") + "Z" if fraction else f"{text}Z"


def _is_number(text: str) -> bool:
    """Whether a header cell is a number, which means the file has no header."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _first_line(exc: BaseException) -> str:
    """First line of an exception message, so a SourceError stays one line."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
