"""Create or update the readers' mirrors: one per live stream and the model bucket, in
nats.conf's MIRROR account.

Read-only users (account READERS) run their ordered consumers on these mirrors, never in
KEEL where the workers' durable consumers live (docs/deploy.md, "Readers in their own
account"). A mirror keeps its source's name, sequences, limits and replica count
(``KEEL_STREAM_REPLICAS``). Run as ``admin`` after ``keel streams``, with the same
environment (``KEEL_NATS_URL``, ``KEEL_NATS_USER``, ``KEEL_NATS_PASSWORD``): compose runs
it as its ``reader-mirrors`` service once ``streams`` is done. Idempotent.
"""

from __future__ import annotations

import asyncio
import os
import sys

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ExternalStream, StreamConfig, StreamSource
from nats.js.errors import NotFoundError

from eventstore.bus import Bus
from eventstore.errors import KeelError
from eventstore.model_store import BUCKET as MODEL_BUCKET
from eventstore.server import URL_ENV
from eventstore.streams import STREAMS, StoreSettings, StreamSpec

MIRROR_API = "$JS.mirror.API"
"""KEEL imports the MIRROR account's JetStream API under this prefix (admin only)."""
SOURCE_API = "$JS.keel.API"
"""MIRROR imports KEEL's JetStream API under this prefix: where its mirrors follow from."""
DELIVER = "deliver.mirror"
"""KEEL exports the mirrors' deliveries to MIRROR under this prefix."""
MODELS = StreamSpec(f"OBJ_{MODEL_BUCKET}", (f"$O.{MODEL_BUCKET}.>",), "regime models")
"""The model bucket (Object Store), so readers can list and show models; the operator
creates it with the first model, and its mirror starts following it then."""


def mirror_config(spec: StreamSpec, settings: StoreSettings) -> StreamConfig:
    live = spec.config(settings if spec is not MODELS else StoreSettings(settings.replicas))
    return StreamConfig(
        name=spec.name,
        description=f"readers' mirror of {spec.name}",
        mirror=StreamSource(
            name=spec.name, external=ExternalStream(api=SOURCE_API, deliver=DELIVER)
        ),
        retention=live.retention,
        storage=live.storage,
        discard=live.discard,
        max_age=live.max_age,
        max_bytes=live.max_bytes,
        num_replicas=live.num_replicas,
    )


async def ensure_mirrors(js: JetStreamContext, settings: StoreSettings) -> list[str]:
    """Add each missing mirror, update one whose limits changed; the names it changed."""
    changed = []
    for spec in (*STREAMS, MODELS):
        wanted = mirror_config(spec, settings)
        try:
            current = (await js.stream_info(spec.name)).config
        except NotFoundError:
            await js.add_stream(wanted)
            changed.append(spec.name)
            continue
        if (
            (current.max_age or 0) != (wanted.max_age or 0)
            or (current.max_bytes or -1) != (wanted.max_bytes or -1)
            or current.num_replicas != wanted.num_replicas
        ):
            await js.update_stream(wanted)
            changed.append(spec.name)
    return changed


async def main() -> int:
    url = os.environ.get(URL_ENV, "")
    if not url:
        raise KeelError(f"set {URL_ENV} to the fleet's nats-server (and the admin's credentials)")
    bus = await Bus.connect(url, name="reader-mirrors", ensure=False)
    try:
        changed = await ensure_mirrors(
            bus.nc.jetstream(prefix=MIRROR_API), StoreSettings.from_env()
        )
    except NatsError as exc:
        raise KeelError(
            f"cannot manage the readers' mirrors ({exc or type(exc).__name__}): run as admin "
            "against a server started from nats.conf"
        ) from None
    finally:
        await bus.close()
    print(f"reader mirrors ready ({len(STREAMS) + 1} streams, {len(changed)} created or updated)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
