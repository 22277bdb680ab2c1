"""``keel backup DIR`` and ``keel restore DIR``: the log to Parquet files and back."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cli.console import console, run, user_errors
from eventstore.backup import Manifest, backup_store, check_dir
from eventstore.bus import Bus
from eventstore.model_store import BUCKET as MODEL_BUCKET
from eventstore.restore import Verified, check_files, load_manifest, restore_store
from eventstore.server import nats_url
from services.runtime.snapshots import SNAPSHOT_BUCKET

BUCKET_STREAMS = (f"KV_{SNAPSHOT_BUCKET}", f"OBJ_{MODEL_BUCKET}")
"""Besides the log's streams and bus replays': worker snapshots and stored models."""


@contextlib.contextmanager
def _progress(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("messages", total=total)
        yield lambda n: progress.advance(task, n)


def _table(manifest: Manifest, title: str) -> Table:
    table = Table(title=title)
    table.add_column("stream", no_wrap=True)
    for column in ("messages", "first seq", "last seq", "consumers", "digest"):
        table.add_column(column, justify="left" if column == "digest" else "right")
    for s in manifest.streams:
        table.add_row(
            s.name,
            f"{s.messages:,}",
            f"{s.first_seq:,}",
            f"{s.last_seq:,}",
            f"{len(s.consumers)}",
            s.digest[:12],
        )
    return table


def _rate(count: int, started: float) -> str:
    wall = time.monotonic() - started
    return f"{wall:.2f}s, {count / max(wall, 1e-9):,.0f} msg/s"


def backup(
    directory: Annotated[Path, typer.Argument(help="A new or empty directory for the backup.")],
) -> None:
    """Export every Keel stream (the log, bus replays, worker snapshots, stored models) to
    one Parquet file per stream plus manifest.json. Attaches to the running fleet's server,
    or reads a stopped fleet's store; never creates a store."""
    with user_errors():
        check_dir(directory)

    async def main() -> Manifest:
        with nats_url(start_server="store") as url:
            bus = await Bus.connect(url, name="backup", ensure=False)
            try:
                with _progress("backup", None) as advance:
                    return await backup_store(bus.nc, directory, BUCKET_STREAMS, advance)
            finally:
                await bus.close()

    started = time.monotonic()
    manifest = run(main())
    console.print(_table(manifest, "Keel backup"))
    console.print(
        f"backed up {manifest.messages:,} messages of {len(manifest.streams)} streams to "
        f"{directory} ({_rate(manifest.messages, started)})",
        highlight=False,
    )


def restore(
    directory: Annotated[Path, typer.Argument(help="A directory written by keel backup.")],
) -> None:
    """Restore a backup into a store with no Keel data (the running server's, or a new
    embedded one here): same sequences, subjects, headers, message ids and payloads, verified
    against the manifest after."""
    with user_errors():
        manifest = load_manifest(directory)
        with _progress("checking files", manifest.messages) as advance:
            check_files(directory, manifest, advance)

    async def main() -> Verified:
        with nats_url() as url:
            bus = await Bus.connect(url, name="restore", ensure=False)
            try:
                with _progress("restore", manifest.messages) as advance:
                    return await restore_store(bus.nc, directory, manifest, advance)
            finally:
                await bus.close()

    started = time.monotonic()
    verified = run(main())
    console.print(_table(manifest, "Keel restore"))
    console.print(
        f"restored {verified.messages:,} messages of {verified.streams} streams and "
        f"{verified.consumers} durable consumers ({_rate(verified.messages, started)}); "
        "verified: every stream's message count, last sequence and digest and every "
        "consumer's ack floor equal the backup's",
        highlight=False,
    )
