"""Slicing read tables into ``Bar`` events: the row rules, and why a refused row was refused.

This is the replay's hot path: a slice whose every row passes the rules is checked on whole
columns and built in one list comprehension; only a slice with a bad row goes row by row.
"""

from __future__ import annotations

import array
from collections.abc import Callable, Iterable, Iterator

import polars as pl

from contracts.events import Bar
from services.marketdata.formats import VALUE_COLUMNS
from services.marketdata.timestamps import iso

_SLICE_ROWS = 16_384
_BEFORE_ANY_TIME = -(1 << 64)  # below every Int64 open time: the first row is never "late"
_MIN_INT64 = -(1 << 63)


def sliced_bars(
    tables: Iterable[pl.DataFrame],
    venue: str,
    symbol: str,
    interval: str,
    step: int,
    report: Callable[[int, str], None],
    none_valid: Callable[[], None] | None = None,
) -> Iterator[list[Bar]]:
    """The bars of each slice of ``_SLICE_ROWS`` rows, from tables in file order (read_bars
    passes one sorted table): each bar's open time must be after the previous bar's, and every
    row that does not become a bar is reported. ``none_valid`` is called at the end when no
    row became a bar.

    Slices, because per-row polars access is slow and a whole chunk as Python objects would
    be large. Callers flatten them with ``itertools.chain.from_iterable``: a Python generator
    in between would cost every bar a suspend and resume."""
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
    (the checks of ``Bar`` and of ``sliced_bars``, on whole columns)."""
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
        return f"duplicate open_time {iso(open_time)}"
    if open_time < last_open:
        return (
            f"open_time {iso(open_time)} is before the previous bar's "
            f"{iso(last_open)} (streaming needs a time-sorted file)"
        )
    try:
        Bar(*series, open_time, open_time + step, *values, ts=open_time + step)
    except ValueError as exc:
        return f"invalid bar ({exc})"
    raise AssertionError("a refused row passed Bar's checks")
