"""``keel model``: train regime models and keep them in the Object Store (docs/regime.md)."""

from __future__ import annotations

import asyncio
import getpass
import math
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from cli.console import console, fail, run, user_errors
from cli.timeparse import parse_time
from contracts.timestamps import iso_ns
from eventstore.bus import Bus
from eventstore.model_store import (
    BUCKET,
    StoredModel,
    get_model,
    list_models,
    put_model,
    read_lifecycle,
    update_lifecycle,
    write_model_file,
)
from eventstore.server import nats_url
from services.marketdata.sources import read_bars
from strategies.regime import lifecycle
from strategies.regime.features import FeatureSpec
from strategies.regime.lifecycle import Lifecycle
from strategies.regime.model import ModelError, RegimeModel, check_token, parse_ref

if TYPE_CHECKING:  # hmmlearn loads only when training
    from services.governance.retrain_job import RetrainOutcome
    from services.governance.retraining import RetrainConfig

app = typer.Typer(
    help="Regime models: train, list, show; retrain, history, promote, rollback.",
    no_args_is_help=True,
)

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

    async def main() -> tuple[list[StoredModel], dict[str, Lifecycle]]:
        with nats_url() as url:
            bus = await _connect(url)
            try:
                stored = await list_models(bus.js)
                lives = {}
                for name in sorted({s.summary.name for s in stored}):
                    life, _ = await read_lifecycle(bus.js, name)
                    if life is not None:
                        lives[name] = life
                return stored, lives
            finally:
                await bus.close()

    stored, lives = _on_bus(main())
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
        "role",
        title=f"models in {BUCKET}",
    )
    for item in stored:
        s = item.summary
        life = lives.get(s.name)
        role = "" if life is None else _role(life, s.tag)
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
            role,
        )
    console.print(table)


def _role(life: Lifecycle, tag: str) -> str:
    if tag == life.current:
        return "current"
    if tag == life.canary:
        return "canary"
    return "rollback" if life.rollback and tag == life.rollback[-1] else ""


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
    if model.lineage is not None:
        line = model.lineage
        for label, value in (
            ("window", f"{iso_ns(line.window_start)} .. {iso_ns(line.window_end)}"),
            ("data sha256", line.data_sha256),
            (
                "held-out LL",
                f"{line.holdout_loglik:.4f}/bar over {line.holdout_bars:,} bars "
                f"(last {line.holdout:.0%}, {line.scorer})",
            ),
            (
                "aligned to",
                f"{line.aligned_to} (cost {line.alignment_cost:.3f})" if line.aligned_to else "-",
            ),
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


def _who(by: str | None) -> str:
    """``--by``, else the OS user (a container may have none)."""
    if by:
        return by
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def _with_bus(work: Callable[[Bus], Coroutine[Any, Any, Any]]) -> Any:
    with nats_url() as url:
        bus = await _connect(url)
        try:
            return await work(bus)
        finally:
            await bus.close()


@app.command()
def retrain(
    name: Annotated[str, typer.Option("--name", help="Model name.")],
    symbol: Annotated[str, typer.Option("--symbol", help="Symbol whose MARKET bars train it.")],
    window: Annotated[str, typer.Option("--window", help="Bars before the newest one.")] = "30d",
    holdout: Annotated[
        float, typer.Option("--holdout", help="Last share of the window scored, not trained.")
    ] = 0.2,
    keep: Annotated[int, typer.Option("--keep", help="Versions kept (older are pruned).")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of clustering and EM.")] = 0,
    states: Annotated[
        int, typer.Option("--states", help="Regimes K of a first version (later: as before).")
    ] = 3,
    iterations: Annotated[int, typer.Option("--iterations", help="Most EM iterations.")] = 100,
    venue: Annotated[str | None, typer.Option("--venue", help="Only this venue's bars.")] = None,
    interval: Annotated[str | None, typer.Option("--interval", help="Only this interval.")] = None,
    end: Annotated[
        str | None, typer.Option("--end", help="Window end (ISO time; default newest bar).")
    ] = None,
    ll_margin: Annotated[
        float, typer.Option("--ll-margin", help="Held-out nats/bar a version may lose.")
    ] = 0.05,
    min_state_share: Annotated[
        float, typer.Option("--min-state-share", help="Held-out share every state needs.")
    ] = 0.01,
    max_alignment_cost: Annotated[
        float, typer.Option("--max-alignment-cost", help="Mean state distance bound (sd).")
    ] = 1.0,
    every: Annotated[
        str | None,
        typer.Option("--every", help="Keep running: retrain per this much new data (e.g. 1d)."),
    ] = None,
    poll: Annotated[
        float, typer.Option("--poll", help="With --every: seconds between looks at the log.")
    ] = 60.0,
) -> None:
    """Retrain NAME from the log's bars; a validated version is stored as the canary.
    Once, or with --every as a worker that retrains whenever the log has that much new data."""
    from services.governance.retrain_job import run_retrain
    from services.governance.retraining import RetrainConfig

    try:
        check_token(name, "model name")
        config = RetrainConfig(
            name=name,
            symbol=symbol,
            window=window,
            holdout=holdout,
            keep=keep,
            seed=seed,
            states=states,
            iterations=iterations,
            ll_margin=ll_margin,
            min_state_share=min_state_share,
            max_alignment_cost=max_alignment_cost,
            every=every or "1d",
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
    stop = _ns(end, "--end")
    if every is not None:
        if stop is not None:
            raise fail("--every follows the newest bar; it takes no --end")
        _on_bus(_with_bus(lambda bus: _schedule(bus, config, poll, venue, interval)))
        return

    async def work(bus: Bus) -> Any:
        return await run_retrain(
            bus, config, at=_now(), by=_who(None), venue=venue, interval=interval, end=stop
        )

    outcome = _on_bus(_with_bus(work))
    console.print(_outcome_table(outcome))
    v = outcome.verdict
    if not v.accepted:
        console.print(f"rejected, not deployed: {v.reason}", highlight=False)
        raise typer.Exit(1)
    console.print(f"canary: {name}:{outcome.tag} (keel model promote {name}:{outcome.tag})")


async def _schedule(
    bus: Bus, config: RetrainConfig, poll: float, venue: str | None, interval: str | None
) -> None:
    """Look every ``poll`` seconds; retrain whenever the log holds ``every`` of new bars."""
    from services.governance.retrain_job import scheduled_run

    console.print(f"retraining {config.name} every {config.every} of {config.symbol} bars")
    last_error = ""
    while True:
        try:
            outcome = await scheduled_run(
                bus, config, at=_now(), by="retrain-schedule", venue=venue, interval=interval
            )
        except ModelError as exc:  # e.g. too few bars yet: the worker carries on
            if str(exc) != last_error:
                console.print(f"{_now()} {config.name}: cannot retrain: {exc}", highlight=False)
            last_error, outcome = str(exc), None
        if outcome is not None:
            last_error = ""
            v = outcome.verdict
            verdict = "canary" if v.accepted else "rejected"
            console.print(
                f"{_now()} {config.name}:{outcome.tag} {verdict}: {v.reason}", highlight=False
            )
        await asyncio.sleep(poll)


def _outcome_table(outcome: RetrainOutcome) -> Table:
    v = outcome.verdict
    table = Table(title=f"retrain {outcome.name}: {'ACCEPTED' if v.accepted else 'REJECTED'}")
    table.add_column("", style="bold")
    table.add_column("")
    for label, value in (
        ("version", f"{outcome.name}:{outcome.tag}"),
        ("bars", f"{outcome.bars:,} on {outcome.subject}"),
        ("window", f"{iso_ns(outcome.window_start)} .. {iso_ns(outcome.window_end)}"),
        ("data sha256", outcome.data_sha256),
        ("reference", outcome.reference or "none (first version)"),
        ("held-out LL/bar", f"{v.holdout_loglik:.4f} over {v.holdout_bars:,} bars"),
        ("reference LL/bar", "-" if v.previous_loglik is None else f"{v.previous_loglik:.4f}"),
        ("state share", ", ".join(f"{s:.1%}" for s in v.state_share)),
        ("alignment cost", "-" if v.alignment_cost is None else f"{v.alignment_cost:.3f}"),
        ("training", f"{outcome.train_seconds:.2f} s"),
        ("reason", v.reason),
        ("canary", outcome.canary or "-"),
        ("pruned", ", ".join(outcome.pruned) or "-"),
    ):
        table.add_row(label, value)
    return table


@app.command()
def history(name: Annotated[str, typer.Argument(help="Model name.")]) -> None:
    """Every retrained version with its verdict, and every promotion, rollback and prune."""
    try:
        check_token(name, "model name")
    except ModelError as exc:
        raise fail(str(exc)) from None

    async def work(bus: Bus) -> tuple[Lifecycle | None, list[StoredModel]]:
        life, _ = await read_lifecycle(bus.js, name)
        return life, await list_models(bus.js)

    life, stored = _on_bus(_with_bus(work))
    if life is None:
        raise fail(f"model {name} has no lifecycle (keel model retrain --name {name} ...)")
    live = {s.summary.tag for s in stored if s.summary.name == name}
    console.print(
        f"model {name}: current {life.current or '-'}, canary {life.canary or '-'}, "
        f"rollback to {life.rollback[-1] if life.rollback else '-'}",
        highlight=False,
    )
    versions = Table(
        "tag",
        "window",
        "data sha256",
        "seed",
        "held-out LL/bar",
        "reference LL/bar",
        "verdict",
        "status",
        "reason",
        title="versions",
    )
    for v in life.versions:
        status = [
            s
            for s, on in (("current", v.tag == life.current), ("canary", v.tag == life.canary))
            if on
        ]
        if v.pruned:
            status.append("pruned")
        elif not v.accepted:
            status.append("not stored")
        elif v.tag not in live:
            status.append("missing")
        versions.add_row(
            v.tag,
            f"{iso_ns(v.window_start)} .. {iso_ns(v.window_end)}",
            v.data_sha256[:16],
            str(v.seed),
            f"{v.holdout_loglik:.4f}",
            "-" if v.previous_loglik is None else f"{v.previous_loglik:.4f}",
            "accepted" if v.accepted else "rejected",
            ",".join(status) or "stored",
            v.reason,
        )
    console.print(versions)
    events = Table("at", "action", "tag", "by", "replaced", "reason", title="history")
    for h in life.history:
        events.add_row(h.at, h.action, h.tag, h.by, h.previous or "-", h.reason)
    console.print(events)


@app.command()
def promote(
    ref: Annotated[str, typer.Argument(help="NAME:TAG of a stored version.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the history).")],
    by: Annotated[str | None, typer.Option("--by", help="Who (default: the OS user).")] = None,
) -> None:
    """Make a version (normally the canary) current; the old current is kept for rollback."""
    try:
        name, tag = parse_ref(ref)
    except ModelError as exc:
        raise fail(str(exc)) from None
    if not tag:
        raise fail(f"promote needs NAME:TAG, not {ref!r}")

    async def work(bus: Bus) -> Lifecycle:
        await get_model(bus.js, ref)
        return await update_lifecycle(
            bus.js, name, lambda life: lifecycle.promote(life, tag, _now(), _who(by), reason)
        )

    life = _on_bus(_with_bus(work))
    console.print(
        f"current: {name}:{life.current} (rollback to {life.rollback[-1] if life.rollback else '-'})"
    )


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the history).")],
    by: Annotated[str | None, typer.Option("--by", help="Who (default: the OS user).")] = None,
) -> None:
    """Make the previous current version current again."""
    try:
        check_token(name, "model name")
    except ModelError as exc:
        raise fail(str(exc)) from None

    async def work(bus: Bus) -> Lifecycle:
        life, _ = await read_lifecycle(bus.js, name)
        if life is None:
            raise ModelError(f"model {name} has no lifecycle to roll back")
        return await update_lifecycle(
            bus.js, name, lambda life: lifecycle.rollback(life, _now(), _who(by), reason)
        )

    life = _on_bus(_with_bus(work))
    console.print(f"current: {name}:{life.current}")
