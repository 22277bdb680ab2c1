"""One retraining run against the log and the model store: the thin runner around
``retraining.py``. Reads the symbol's bars from the MARKET stream (stored bytes kept for the
data hash), retrains against the reference version, stores an accepted version as the
canary, records the outcome in the model's lifecycle (accepted or not, with its numbers and
reason) and prunes old versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from contracts.events import Bar
from contracts.subjects import name_token, symbol_token
from eventstore.bus import Bus, Stored, read_message
from eventstore.log_reader import last_per_subject
from eventstore.model_store import (
    delete_model,
    get_model,
    list_models,
    put_model,
    read_lifecycle,
    update_lifecycle,
)
from services.governance.retraining import (
    RetrainConfig,
    Verdict,
    is_due,
    retrain,
    window_data,
    window_of,
)
from strategies.regime.lifecycle import prune_plan, record_prune, record_retrain
from strategies.regime.model import ModelError, RegimeModel

STREAM = "MARKET"
READ_TIMEOUT_S = 30.0


class RetrainOutcome(msgspec.Struct, frozen=True):
    """What one run did; the lifecycle history holds the same facts. (A ``gov.model.*``
    event carrying it is for the contracts owner to add.)"""

    name: str
    tag: str
    subject: str
    window_start: int
    window_end: int
    bars: int
    data_sha256: str
    reference: str
    verdict: Verdict
    stored: bool
    canary: str
    pruned: tuple[str, ...]
    train_seconds: float


def bar_filter(symbol: str, venue: str | None, interval: str | None) -> str:
    venue_part = name_token(venue, "venue") if venue else "*"
    interval_part = name_token(interval) if interval else "*"
    return f"md.bar.{venue_part}.{symbol_token(symbol)}.{interval_part}"


async def stored_bars(bus: Bus, subject: str) -> list[tuple[Bar, bytes]]:
    """Every bar on ``subject`` in stored order with its stored bytes (an ordered consumer
    that stops once caught up)."""
    inbox: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await bus.js.subscribe(
        subject,
        stream=STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        cb=inbox.put,
    )
    out: list[tuple[Bar, bytes]] = []
    try:
        info = await sub.consumer_info()
        if not info.num_pending and not (info.delivered and info.delivered.consumer_seq):
            return out
        while True:
            async with asyncio.timeout(READ_TIMEOUT_S):
                msg = await inbox.get()
            item = read_message(msg, STREAM)
            if isinstance(item, Stored) and isinstance(item.event, Bar):
                out.append((item.event, msg.data))
            if not msg.metadata.num_pending:
                return out
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _reference(bus: Bus, name: str) -> RegimeModel | None:
    life, _ = await read_lifecycle(bus.js, name)
    if life is not None and life.reference:
        return await get_model(bus.js, f"{name}:{life.reference}")
    if any(s.summary.name == name for s in await list_models(bus.js)):
        return await get_model(bus.js, name)
    return None


async def run_retrain(
    bus: Bus,
    config: RetrainConfig,
    *,
    at: str,
    by: str = "retrain",
    venue: str | None = None,
    interval: str | None = None,
    end: int | None = None,
) -> RetrainOutcome:
    """One run; ``at`` is the time recorded in the history (the caller's clock)."""
    subject = bar_filter(config.symbol, venue, interval)
    stored = await stored_bars(bus, subject)
    if not stored:
        raise ModelError(f"no bars stored on {subject} in {STREAM}")
    start, stop = window_of(max(b.close_time for b, _ in stored), config.window, end)
    data = window_data(stored, start, stop)
    reference = await _reference(bus, config.name)
    began = time.perf_counter()
    candidate = await asyncio.to_thread(retrain, data, config, reference)
    seconds = time.perf_counter() - began
    model, verdict = candidate.model, candidate.verdict
    if verdict.accepted:
        await put_model(bus.js, model)
    life = await update_lifecycle(
        bus.js, config.name, lambda life: record_retrain(life, candidate.entry(), at, by)
    )
    names = [s.summary.tag for s in await list_models(bus.js) if s.summary.name == config.name]
    doomed = prune_plan(life, names, config.keep)
    for tag in doomed:
        await delete_model(bus.js, config.name, tag)
    if doomed:
        life = await update_lifecycle(
            bus.js, config.name, lambda life: record_prune(life, doomed, at, by, config.keep)
        )
    return RetrainOutcome(
        name=config.name,
        tag=model.tag,
        subject=subject,
        window_start=start,
        window_end=stop,
        bars=len(data.bars),
        data_sha256=data.sha256,
        reference=reference.key if reference is not None else "",
        verdict=verdict,
        stored=verdict.accepted,
        canary=life.canary,
        pruned=tuple(doomed),
        train_seconds=seconds,
    )


async def scheduled_run(
    bus: Bus,
    config: RetrainConfig,
    *,
    at: str,
    by: str = "retrain",
    venue: str | None = None,
    interval: str | None = None,
) -> RetrainOutcome | None:
    """One look of the scheduler: retrain when the log holds ``every`` of bars beyond the
    window of the last run (accepted or not), else None. Due-ness reads the log's bar times,
    not the clock, so a backfill or a paused feed shifts runs the way the data does."""
    subject = bar_filter(config.symbol, venue, interval)
    newest = [
        s.event.close_time
        for s in await last_per_subject(bus, STREAM, subject)
        if isinstance(s.event, Bar)
    ]
    if not newest:
        return None
    life, _ = await read_lifecycle(bus.js, config.name)
    last = max((v.window_end for v in life.versions), default=None) if life else None
    if not is_due(last, max(newest), config.every):
        return None
    return await run_retrain(bus, config, at=at, by=by, venue=venue, interval=interval)
