"""``keel model``: train regime models and keep them in the Object Store (docs/regime.md)."""

from __future__ import annotations

import math
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.console import console, fail, run, user_errors
from cli.timeparse import iso_ns, parse_time
from eventstore.bus import Bus
from eventstore.model_store import (
    BUCKET,
    StoredModel,
    get_model,
    list_models,
    put_model,
    write_model_file,
)
from eventstore.server import nats_url
from services.marketdata.sources import read_bars
from strategies.regime.features import FeatureSpec
from strategies.regime.model import ModelError, RegimeModel

app = typer.Typer(help="Regime models: train, list, show.", no_args_is_help=True)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ns(text: str | None, what: str) -> int | None:
    if text is None:
        return None
    try:
        moment = parse_time(text)
    except ValueError as exc:
        raise fail(f"{what}: {exc}") from None
    return (moment - EPOCH) // timedelta(microseconds=1) * 1_000


def _on_bus(work: Coroutine[Any, Any, Any]) -> Any:
    """``run`` it; a missing or clashing model is one ``error:`` line like other mistakes."""
    try:
        return run(work)
    except ModelError as exc:
        raise fail(str(exc)) from None


async def _connect(url: str) -> Bus:
    return await Bus.connect(url, name="model", ensure=False)


@app.command()
def train(
    data: Annotated[Path, typer.Option("--data", help="Bar file (CSV or Parquet).")],
    states: Annotated[int, typer.Option("--states", help="Number of regimes K (>= 2).")],
    symbol: Annotated[
        str | None, typer.Option("--symbol", help="Symbol (default: the file name stem).")
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Model name.")] = "regime",
    tag: Annotated[
        str | None, typer.Option("--tag", help="Version tag (default: a hash of the model).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initial clustering and EM.")] = 0,
    start: Annotated[
        str | None, typer.Option("--start", help="First bar (ISO time), inclusive.")
    ] = None,
    end: Annotated[str | None, typer.Option("--end", help="End (ISO time), exclusive.")] = None,
    volume: Annotated[
        bool, typer.Option("--volume/--no-volume", help="Add the volume feature.")
    ] = False,
    wicks: Annotated[
        bool, typer.Option("--wicks/--no-wicks", help="Use the intrabar wick features.")
    ] = True,
    vol_window: Annotated[
        int, typer.Option("--vol-window", help="Add rolling volatility over N bars (0 = off).")
    ] = 0,
    covariance: Annotated[
        str, typer.Option("--covariance", help="Covariance type: full or diag.")
    ] = "full",
    iterations: Annotated[int, typer.Option("--iterations", help="Most EM iterations.")] = 100,
    venue: Annotated[str, typer.Option("--venue", help="Venue name of the bars.")] = "local",
    interval: Annotated[
        str | None, typer.Option("--interval", help="Bar interval (default: inferred).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write the model to this file.")
    ] = None,
    store: Annotated[
        bool, typer.Option("--store/--no-store", help=f"Store it in the {BUCKET} bucket.")
    ] = True,
) -> None:
    """Fit a K-state HMM to a bar file and store it (and/or write it with --out)."""
    if not store and out is None:
        raise fail("--no-store needs --out FILE, or the model goes nowhere")
    if covariance not in ("full", "diag"):
        raise fail(f"--covariance must be full or diag, not {covariance!r}")
    first, last = _ns(start, "--start"), _ns(end, "--end")
    try:
        spec = FeatureSpec(wicks=wicks, vol_window=vol_window, volume=volume)
    except ValueError as exc:
        raise fail(str(exc)) from None
    with user_errors():
        bars = read_bars(data, venue=venue, symbol=symbol or data.stem, interval=interval).bars
    bars = [
        b
        for b in bars
        if (first is None or b.open_time >= first) and (last is None or b.open_time < last)
    ]
    from strategies.regime.training import train as fit  # hmmlearn loads only when training

    try:
        model = fit(
            bars,
            states=states,
            name=name,
            tag=tag or "",
            seed=seed,
            features=spec,
            covariance_type="full" if covariance == "full" else "diag",
            n_iter=iterations,
        )
        if out is not None:
            write_model_file(model, out)
    except ModelError as exc:
        raise fail(str(exc)) from None
    for table in model_tables(model):
        console.print(table)
    if out is not None:
        console.print(f"written to {out}", highlight=False)
    if not store:
        return

    async def main() -> None:
        with nats_url() as url:
            bus = await _connect(url)
            try:
                result = await put_model(bus.js, model)
            finally:
                await bus.close()
        what = "stored" if result.created else "already stored (same content)"
        console.print(f"{what}: {model.key} in {BUCKET} as {result.stored.object_name}")

    _on_bus(main())


@app.command(name="list")
def list_command() -> None:
    """Every stored model version, oldest first."""

    async def main() -> list[StoredModel]:
        with nats_url() as url:
            bus = await _connect(url)
            try:
                return await list_models(bus.js)
            finally:
                await bus.close()

    stored = _on_bus(main())
    if not stored:
        console.print(f"no models stored in {BUCKET} (keel model train)")
        return
    table = Table(
        "name",
        "tag",
        "states",
        "features",
        "symbols",
        "training range",
        "bars",
        "log-likelihood",
        "stored at",
        title=f"models in {BUCKET}",
    )
    for item in stored:
        s = item.summary
        table.add_row(
            s.name,
            s.tag,
            str(s.states),
            ",".join(s.features),
            ",".join(s.symbols),
            f"{iso_ns(s.first_bar)} .. {iso_ns(s.last_bar)}",
            f"{s.bars:,}",
            f"{s.log_likelihood:,.1f}",
            item.stored_at[:19].replace("T", " "),
        )
    console.print(table)


@app.command()
def show(
    ref: Annotated[str, typer.Argument(help="NAME (latest version) or NAME:TAG.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Export the model to this file.")
    ] = None,
) -> None:
    """One stored model: its metadata and states; --out exports it for model_file=PATH."""

    async def main() -> RegimeModel:
        with nats_url() as url:
            bus = await _connect(url)
            try:
                return await get_model(bus.js, ref)
            finally:
                await bus.close()

    model = _on_bus(main())
    for table in model_tables(model):
        console.print(table)
    if out is not None:
        try:
            write_model_file(model, out)
        except ModelError as exc:
            raise fail(str(exc)) from None
        console.print(f"written to {out}", highlight=False)


def model_tables(model: RegimeModel) -> list[Table]:
    """The model's metadata, and per state its label and what it means in returns."""
    t = model.training
    meta = Table(title=f"model {model.key}", show_header=False)
    for label, value in (
        ("states", str(model.n_states)),
        ("features", ", ".join(model.features.names)),
        ("covariance", model.covariance_type),
        ("training data", f"{t.venue} {','.join(t.symbols)} {t.interval}, {t.bars:,} bars"),
        ("training range", f"{iso_ns(t.first_bar)} .. {iso_ns(t.last_bar)}"),
        ("log-likelihood", f"{model.log_likelihood:,.2f}"),
        ("EM", f"{model.n_iter} iterations, {'converged' if model.converged else 'NOT converged'}"),
        ("seed", str(model.seed)),
    ):
        meta.add_row(label, value)
    spec = model.features
    states = Table("state", "label", "mean return", "return sd", "stay prob", title="states")
    for k in range(model.n_states):
        mean = spec.center[0] + spec.scale[0] * model.means[k][0]
        sd = spec.scale[0] * math.sqrt(model.covars[k][0][0])
        states.add_row(
            str(k), model.labels[k], f"{mean:+.3e}", f"{sd:.3e}", f"{model.transmat[k][k]:.4f}"
        )
    return [meta, states]
