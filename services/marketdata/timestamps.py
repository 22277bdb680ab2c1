"""Open times of a bar file as Int64 nanoseconds UTC, and back to text for messages.

A time column holds ISO-8601 text (an offset or ``Z`` is honoured, naive text and bare dates
are UTC), a Parquet Date/Datetime, or epoch numbers whose unit is read from each value's
magnitude: below 1e11 seconds, below 1e14 milliseconds, below 1e17 microseconds, otherwise
nanoseconds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from services.marketdata.errors import SourceError


class TimeParser:
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


def iso(nanoseconds: int) -> str:
    """UTC ISO-8601 text for a nanosecond time, e.g. ``2023-03-01T00:05:00Z``."""
    seconds, fraction = divmod(nanoseconds, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{fraction:09d}".rstrip("0") + "Z" if fraction else f"{text}Z"
