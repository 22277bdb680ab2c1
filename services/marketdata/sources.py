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
"""

from __future__ import annotations

import codecs
import re
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import polars as pl

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
_POLARS_ERRORS = (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError)


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
    """Read one bar file; see the module docstring for the formats and the row rules."""
    path = Path(path)
    step = None if interval is None else interval_ns(interval)
    try:
        frame = _load(path)
        times = _times_ns(frame["time"], frame["row"], path)
        values = [_floats(frame[name]) for name in VALUE_COLUMNS]
        table = pl.DataFrame([frame["row"].cast(pl.Int64), times, *values]).sort(
            "time", nulls_last=True, maintain_order=True
        )
    except _POLARS_ERRORS as exc:
        raise SourceError(f"{path}: unreadable: {_first_line(exc)}") from exc
    if table.height == 0:
        raise SourceError(f"{path}: no data rows")
    if step is None:
        step = _infer_step(table["time"], path)
    label = format_interval(step)
    if label is None:
        raise SourceError(f"{path}: interval of {step} ns is not a whole number of seconds")
    bars, skipped = _build(table, venue=venue, symbol=symbol, interval=label, step=step)
    if not bars:
        raise SourceError(f"{path}: no valid rows (first problem: {skipped[0]})")
    return BarFile(bars=tuple(bars), interval=label, skipped=tuple(skipped))


def _load(path: Path) -> pl.DataFrame:
    """The file as columns ``row``, ``time`` and the five value columns, raw types kept."""
    if not path.exists():
        raise SourceError(f"{path}: file not found")
    if not path.is_file():
        raise SourceError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: empty file")
    with path.open("rb") as handle:
        is_parquet = handle.read(len(_PARQUET_MAGIC)) == _PARQUET_MAGIC
    if is_parquet:
        return _pick_columns(pl.read_parquet(path), path, first_row=1)
    if path.suffix.lower() == ".parquet":
        raise SourceError(f"{path}: not a Parquet file (no PAR1 signature)")
    first_line = _first_text_line(path)
    fields = [field.strip().strip('"') for field in first_line.split(",")]
    if all(_is_number(field) for field in fields):
        if len(fields) < len(VALUE_COLUMNS) + 1:
            raise SourceError(
                f"{path}: headerless CSV needs 6 columns (time,open,high,low,close,volume), "
                f"found {len(fields)}"
            )
        raw = pl.read_csv(path, has_header=False, infer_schema=False, truncate_ragged_lines=True)
        raw = raw.select(raw.columns[:6]).rename(
            dict(zip(raw.columns[:6], ("time", *VALUE_COLUMNS), strict=True))
        )
        return raw.with_row_index("row", offset=1)
    raw = pl.read_csv(path, infer_schema=False, truncate_ragged_lines=True)
    return _pick_columns(raw, path, first_row=2)


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


def _pick_columns(raw: pl.DataFrame, path: Path, *, first_row: int) -> pl.DataFrame:
    """Select the time and value columns by name, saying which one is missing."""
    by_name: dict[str, str] = {}
    for column in raw.columns:
        by_name.setdefault(column.strip().lstrip("\ufeff").lower().replace(" ", "_"), column)
    time_column = next((by_name[name] for name in TIME_COLUMNS if name in by_name), None)
    if time_column is None:
        found = ", ".join(raw.columns[:12]) or "none"
        raise SourceError(
            f"{path}: no time column (expected one of {', '.join(TIME_COLUMNS)}; found {found})"
        )
    missing = [name for name in VALUE_COLUMNS if name not in by_name]
    if missing:
        names = ", ".join(repr(name) for name in missing)
        raise SourceError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {names}")
    picked = raw.select(
        pl.col(time_column).alias("time"), *(pl.col(by_name[n]).alias(n) for n in VALUE_COLUMNS)
    )
    return picked.with_row_index("row", offset=first_row).filter(
        ~pl.all_horizontal(pl.exclude("row").is_null())
    )


def _times_ns(column: pl.Series, rows: pl.Series, path: Path) -> pl.Series:
    """Open times as Int64 nanoseconds UTC; nulls only where the cell was empty."""
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
        return _float_epoch_ns(column)
    if dtype != pl.String:
        raise SourceError(f"{path}: time column has unsupported type {dtype}")
    text = column.str.strip_chars()
    text = text.set(text == "", None)
    as_int = text.cast(pl.Int64, strict=False)
    if as_int.null_count() == text.null_count():
        return _epoch_ns(as_int)
    as_float = text.cast(pl.Float64, strict=False)
    if as_float.null_count() == text.null_count():
        return _float_epoch_ns(as_float)
    parsed = text.str.to_datetime(time_unit="ns", time_zone="UTC", strict=False)
    bad = parsed.is_null() & text.is_not_null()
    if bad.any():
        index = bad.arg_true()[0]
        raise SourceError(
            f"{path}: unparseable timestamp {text[index]!r} at row {rows[index]} "
            f"(expected ISO-8601 or epoch numbers)"
        )
    return parsed.dt.epoch("ns").alias("time")


def _epoch_ns(seconds_or_finer: pl.Series) -> pl.Series:
    """Integer epochs to nanoseconds, choosing the unit per value by magnitude."""
    frame = pl.DataFrame({"t": seconds_or_finer})
    size = pl.col("t").abs()
    scaled = (
        pl.when(size < 10**11)
        .then(pl.col("t") * 1_000_000_000)
        .when(size < 10**14)
        .then(pl.col("t") * 1_000_000)
        .when(size < 10**17)
        .then(pl.col("t") * 1_000)
        .otherwise(pl.col("t"))
    )
    return frame.select(scaled.alias("time"))["time"]


def _float_epoch_ns(epochs: pl.Series) -> pl.Series:
    """Float epochs to nanoseconds; whole values go through integers to stay exact."""
    if (epochs.drop_nulls() == epochs.drop_nulls().floor()).all():
        return _epoch_ns(epochs.cast(pl.Int64))
    frame = pl.DataFrame({"t": epochs})
    size = pl.col("t").abs()
    factor = (
        pl.when(size < 1e11)
        .then(1e9)
        .when(size < 1e14)
        .then(1e6)
        .when(size < 1e17)
        .then(1e3)
        .otherwise(1.0)
    )
    return frame.select((pl.col("t") * factor).round().cast(pl.Int64).alias("time"))["time"]


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


def _build(
    table: pl.DataFrame, *, venue: str, symbol: str, interval: str, step: int
) -> tuple[list[Bar], list[str]]:
    """Bars from sorted columns (plain Python lists: per-row polars access is slow)."""
    bars: list[Bar] = []
    problems: list[tuple[int, str]] = []
    last_open: int | None = None
    columns = [table[name].to_list() for name in ("row", "time", *VALUE_COLUMNS)]
    for row, open_time, *values in zip(*columns, strict=True):
        if open_time is None:
            problems.append((row, f"row {row}: missing timestamp"))
            continue
        if None in values:
            names = ", ".join(n for n, v in zip(VALUE_COLUMNS, values, strict=True) if v is None)
            problems.append((row, f"row {row}: missing or non-numeric {names}"))
            continue
        if open_time == last_open:
            problems.append((row, f"row {row}: duplicate open_time {_iso(open_time)}"))
            continue
        open_, high, low, close, volume = values
        try:
            bar = Bar(
                ts=open_time + step,
                venue=venue,
                symbol=symbol,
                interval=interval,
                open_time=open_time,
                close_time=open_time + step,
                open=open_,
                high=high,
                low=low,
                close=close,
                volume=volume,
            )
        except ValueError as exc:
            problems.append((row, f"row {row}: invalid bar ({exc})"))
            continue
        bars.append(bar)
        last_open = open_time
    problems.sort(key=lambda problem: problem[0])
    return bars, [message for _, message in problems]


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
