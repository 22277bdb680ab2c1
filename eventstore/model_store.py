"""Regime models in the JetStream Object Store bucket ``KEEL_MODELS``, and in model files.

One object per model version, named ``<name>/<tag>``; its bytes are the model's JSON
(``strategies/regime/model.py``) and its description a JSON ``ModelSummary``, so listing
the bucket needs no download. A version is immutable: storing the same name and tag again
with the same bytes is a no-op, with other bytes an error. ``NAME`` without a tag means the
version stored last, unless the model has a lifecycle (``keel model retrain``): then it
means the current version (``keel model promote``). The Object Store chunks objects over a stream, so the bucket
replicates and survives restarts like the rest of the log. A model file holds the same bytes
as an object; a backtest names one with ``--param model_file=PATH``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectInfo, ObjectMeta
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from contracts.events import Bar
from eventstore.bus import Bus
from eventstore.errors import KeelError
from eventstore.server import nats_url
from strategies.regime.lifecycle import Lifecycle
from strategies.regime.model import ModelError, RegimeModel, decode_model, encode_model, parse_ref

BUCKET = "KEEL_MODELS"
LIFECYCLE_BUCKET = "KEEL_MODEL_LIFECYCLE"
"""KV bucket, one key per model name: its ``Lifecycle`` (current, canary, history)."""
CAS_ATTEMPTS = 5


class ModelSummary(msgspec.Struct, frozen=True):
    """What ``keel model list`` shows; stored as the object's description."""

    name: str
    tag: str
    states: int
    features: tuple[str, ...]
    labels: tuple[str, ...]
    symbols: tuple[str, ...]
    interval: str
    first_bar: int
    last_bar: int
    bars: int
    log_likelihood: float
    seed: int

    @classmethod
    def of(cls, model: RegimeModel) -> ModelSummary:
        t = model.training
        return cls(
            name=model.name,
            tag=model.tag,
            states=model.n_states,
            features=model.features.names,
            labels=model.labels,
            symbols=t.symbols,
            interval=t.interval,
            first_bar=t.first_bar,
            last_bar=t.last_bar,
            bars=t.bars,
            log_likelihood=model.log_likelihood,
            seed=model.seed,
        )


class StoredModel(msgspec.Struct, frozen=True):
    summary: ModelSummary
    object_name: str
    size: int
    stored_at: str
    """The server's modification time of the object (RFC 3339, UTC)."""


class PutResult(msgspec.Struct, frozen=True):
    stored: StoredModel
    created: bool
    """False when this exact version was already stored."""


def object_name(name: str, tag: str) -> str:
    return f"{name}/{tag}"


async def model_store(js: JetStreamContext) -> ObjectStore | None:
    """The bucket, or None before the first model was stored."""
    try:
        return await js.object_store(BUCKET)
    except (BucketNotFoundError, NotFoundError):
        return None


async def put_model(js: JetStreamContext, model: RegimeModel) -> PutResult:
    store = await model_store(js) or await js.create_object_store(
        BUCKET, description="Keel regime models"
    )
    key = object_name(model.name, model.tag)
    data = encode_model(model)
    try:
        existing = await store.get(key)
    except NotFoundError:
        existing = None
    if existing is not None and existing.info is not None and not existing.info.deleted:
        if existing.data != data:
            raise ModelError(
                f"model {model.key} is already stored with other content; give another --tag"
            )
        return PutResult(_stored(existing.info), created=False)
    description = msgspec.json.encode(ModelSummary.of(model)).decode()
    info = await store.put(key, data, meta=ObjectMeta(name=key, description=description))
    return PutResult(_stored(info), created=True)


async def list_models(js: JetStreamContext) -> list[StoredModel]:
    """Every stored version, oldest first; objects that are not models are skipped."""
    store = await model_store(js)
    if store is None:
        return []
    try:
        infos = await store.list(ignore_deletes=True)
    except NotFoundError:
        return []
    out = []
    for info in infos:
        try:
            out.append(_stored(info))
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError):
            continue
    out.sort(key=lambda s: (_time(s.stored_at), s.object_name))
    return out


CANARY = "canary"
"""The tag that names a lifecycle's canary; a stored tag is a content hash, never this."""


async def get_model(js: JetStreamContext, ref: str) -> RegimeModel:
    """The model ``NAME:TAG``, the lifecycle's canary ``NAME:canary`` (how a strategy's
    canary variant runs what retraining deployed), or the default ``NAME``; ``ModelError``
    if absent."""
    name, tag = parse_ref(ref)
    store = await model_store(js)
    if store is None:
        raise ModelError(f"unknown model {ref!r}: no model stored yet (keel model train)")
    if tag == CANARY:
        life, _ = await read_lifecycle(js, name)
        if life is None or not life.canary:
            raise ModelError(f"model {name} has no canary (keel model retrain deploys one)")
        tag = life.canary
    if not tag:
        stored = await list_models(js)
        versions = [s for s in stored if s.summary.name == name]
        if not versions:
            known = ", ".join(sorted({s.summary.name for s in stored})) or "none"
            raise ModelError(f"unknown model {ref!r}; stored: {known}")
        tag = await _default_tag(js, name, [s.summary.tag for s in versions])
    try:
        result = await store.get(object_name(name, tag))
    except NotFoundError:
        raise ModelError(
            f"unknown model {name}:{tag} (keel model list shows the stored ones)"
        ) from None
    if result.info is None or result.info.deleted or result.data is None:
        raise ModelError(f"unknown model {name}:{tag}")
    return decode_model(result.data, f"model {name}:{tag}")


async def _default_tag(js: JetStreamContext, name: str, stored_oldest_first: list[str]) -> str:
    """The current version when the model has a lifecycle, else the version stored last;
    a lifecycle's canary is never chosen by default (it is deployed as a canary only)."""
    life, _ = await read_lifecycle(js, name)
    if life is None:
        return stored_oldest_first[-1]
    if life.current:
        return life.current
    others = [t for t in stored_oldest_first if t != life.canary]
    if not others:
        raise ModelError(
            f"model {name} has no current version yet (keel model promote {name}:{life.canary})"
        )
    return others[-1]


async def delete_model(js: JetStreamContext, name: str, tag: str) -> None:
    store = await model_store(js)
    if store is None:
        return
    try:
        await store.delete(object_name(name, tag))
    except NotFoundError:
        return


async def _lifecycle_kv(js: JetStreamContext, create: bool) -> KeyValue | None:
    try:
        return await js.key_value(LIFECYCLE_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        if not create:
            return None
    return await js.create_key_value(
        config=KeyValueConfig(
            bucket=LIFECYCLE_BUCKET, description="Keel model lifecycles", history=16
        )
    )


async def read_lifecycle(js: JetStreamContext, name: str) -> tuple[Lifecycle | None, int]:
    """The model's lifecycle and its KV revision (0 when there is none)."""
    kv = await _lifecycle_kv(js, create=False)
    if kv is None:
        return None, 0
    try:
        entry = await kv.get(name)
    except (KeyNotFoundError, NotFoundError):
        return None, 0
    if entry.value is None:
        return None, 0
    try:
        life = msgspec.json.decode(entry.value, type=Lifecycle)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ModelError(f"lifecycle of model {name} is unreadable: {exc}") from None
    return life, entry.revision or 0


async def update_lifecycle(
    js: JetStreamContext, name: str, change: Callable[[Lifecycle], Lifecycle]
) -> Lifecycle:
    """Apply ``change`` compare-and-set, again on a concurrent update (a promote during a
    retrain); ``change`` raises ``ModelError`` to refuse."""
    kv = await _lifecycle_kv(js, create=True)
    assert kv is not None
    for _ in range(CAS_ATTEMPTS):
        life, revision = await read_lifecycle(js, name)
        updated = change(life or Lifecycle(name=name))
        data = msgspec.json.encode(updated)
        try:
            if revision:
                await kv.update(name, data, last=revision)
            else:
                await kv.create(name, data)
        except KeyWrongLastSequenceError:
            continue
        return updated
    raise ModelError(f"lifecycle of model {name} kept changing; try again")


def fetch_model(ref: str, url: str | None = None) -> RegimeModel:
    """Blocking ``get_model`` for the strategy build path, which runs before or outside an
    event loop: on its own thread and loop, so it works from both. Without ``url`` the
    server is found like every command finds it (``KEEL_NATS_URL``, ``.keel``)."""

    async def main(address: str) -> RegimeModel:
        bus = await Bus.connect(address, name="model-fetch", ensure=False)
        try:
            return await get_model(bus.js, ref)
        finally:
            await bus.close()

    def run() -> RegimeModel:
        if url is not None:
            return asyncio.run(main(url))
        with nats_url() as address:
            return asyncio.run(main(address))

    parse_ref(ref)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        try:
            return pool.submit(run).result()
        except (KeelError, NatsError) as exc:
            raise ModelError(f"model {ref}: {exc or type(exc).__name__}") from None


def read_model_file(path: Path | str) -> RegimeModel:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"model file {path}: not found") from None
    except OSError as exc:
        raise ModelError(f"model file {path}: {exc.strerror or exc}") from None
    return decode_model(data, f"model file {path}")


def write_model_file(model: RegimeModel, path: Path | str) -> None:
    path = Path(path)
    try:
        path.write_bytes(encode_model(model))
    except OSError as exc:
        raise ModelError(f"model file {path}: {exc.strerror or exc}") from None


def train_model_file(
    bars: Sequence[Bar], path: Path | str, *, states: int = 3, **options: object
) -> RegimeModel:
    """Train and write the model file a backtest takes as ``--param model_file=PATH``."""
    from strategies.regime.training import train  # hmmlearn loads only when training

    model = train(bars, states=states, **options)  # type: ignore[arg-type]
    write_model_file(model, path)
    return model


def _stored(info: ObjectInfo) -> StoredModel:
    summary = msgspec.json.decode(info.description or "", type=ModelSummary)
    return StoredModel(
        summary=summary, object_name=info.name, size=info.size or 0, stored_at=info.mtime or ""
    )


def _time(stamp: str) -> datetime:
    """The server's RFC 3339 time (nanosecond digits cut to what Python parses)."""
    head, dot, rest = stamp.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())[:6]
        zone = rest[len("".join(c for c in rest if c.isdigit())) :]
        stamp = f"{head}.{digits}{zone}"
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
