"""Bar file formats: detecting CSV (with or without a header) or Parquet, and reading either
in file order as tables of row numbers, open times and the five values.

Rows are numbered by line in a CSV (the header is line 1) and from 1 in Parquet; blank rows
are dropped; a value that is not a number becomes null, and the row rules decide about it.
"""

from __future__ import annotations

import codecs
import itertools
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from services.marketdata.errors import SourceError, first_line
from services.marketdata.timestamps import TimeParser

TIME_COLUMNS = ("open_time", "time", "timestamp", "date", "datetime", "ts")
VALUE_COLUMNS = ("open", "high", "low", "close", "volume")
POLARS_ERRORS = (
    pl.exceptions.PolarsError,
    pl.exceptions.PanicException,
    pa.ArrowException,
    OSError,
)
"""What polars and pyarrow raise on a file they cannot read."""

_SNIFF_BYTES = 65_536
_PARQUET_MAGIC = b"PAR1"
_CSV_CHUNK_BYTES = 4 << 20
_PARQUET_BUFFER_BYTES = 1 << 20


def file_tables(
    path: Path, chunk_rows: int | None, *, values: bool = True
) -> Iterator[pl.DataFrame]:
    """The file in file order as tables of ``row`` (Int64), ``time`` (Int64 nanoseconds UTC,
    null where empty) and the five value columns (Float64, null where not a number); the whole
    file is one table when ``chunk_rows`` is None. With ``values=False`` only ``row`` and
    ``time``, and a Parquet file reads only its time column."""
    times = TimeParser(path)
    try:
        for raw in _raw_chunks(path, chunk_rows, values=values):
            rows = raw["row"].cast(pl.Int64)
            floats = [_floats(raw[name]) for name in VALUE_COLUMNS] if values else []
            yield pl.DataFrame([rows, times(raw["time"], rows), *floats])
    except POLARS_ERRORS as exc:
        raise SourceError(f"{path}: unreadable: {first_line(exc)}") from exc


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


def _floats(column: pl.Series) -> pl.Series:
    """A value column as Float64; text that is not a number becomes null (a skipped row)."""
    if column.dtype == pl.String:
        column = column.str.strip_chars()
    return column.cast(pl.Float64, strict=False)


def _is_number(text: str) -> bool:
    """Whether a header cell is a number, which means the file has no header."""
    try:
        float(text)
    except ValueError:
        return False
    return True
