"""Acknowledgements of pipelined publishes: each future resolves to the ack, or fails with
the server's error (a full stream's refusal included), on one inbox subscription."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import PubAck
from nats.js.errors import (
    APIError,
    BadRequestError,
    NoStreamResponseError,
    NotFoundError,
    ServerError,
    ServiceUnavailableError,
)


def _api_error(error: dict) -> APIError:
    """``APIError.from_error`` raises instead of returning: the same classes, returned."""
    kinds: dict[int, type[APIError]] = {
        503: ServiceUnavailableError,
        500: ServerError,
        404: NotFoundError,
        400: BadRequestError,
    }
    fields = {k: error.get(k) for k in ("code", "err_code", "description")}
    return kinds.get(error.get("code") or 0, APIError)(**fields)


class AckInbox:
    """Acknowledgements of pipelined publishes, on one inbox subscription.

    nats-py's ``publish_async`` (2.16) never resolves a future whose ack is an error: its
    reply handler raises the error instead of setting it, so a publish into a full stream
    would wait forever. Here the future fails with the server's error."""

    def __init__(self, nc: Client, window: int) -> None:
        self._nc = nc
        self._slots = asyncio.Semaphore(window)
        self._futures: dict[str, asyncio.Future[PubAck]] = {}
        self._prefix = ""
        self._tokens = itertools.count()

    @property
    def full(self) -> bool:
        """Whether a ``publish`` would wait for a slot: the only way it blocks."""
        return self._slots.locked()

    async def publish(
        self, subject: str, data: bytes, headers: dict[str, str]
    ) -> asyncio.Future[PubAck]:
        if not self._prefix:
            prefix = f"{self._nc.new_inbox()}."
            await self._nc.subscribe(f"{prefix}*", cb=self._reply)
            self._prefix = prefix
        await self._slots.acquire()
        token = str(next(self._tokens))
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self._futures[token] = future
        future.add_done_callback(functools.partial(self._done, token))
        try:
            await self._nc.publish(subject, data, reply=self._prefix + token, headers=headers)
        except BaseException:
            future.cancel()
            raise
        return future

    def _done(self, token: str, _: asyncio.Future[PubAck]) -> None:
        self._futures.pop(token, None)
        self._slots.release()

    async def _reply(self, msg: Msg) -> None:
        future = self._futures.get(msg.subject[len(self._prefix) :])
        if future is None or future.done():
            return
        if (msg.headers or {}).get("Status") == "503":
            future.set_exception(NoStreamResponseError())
            return
        try:
            answer = json.loads(msg.data)
            if "error" in answer:
                future.set_exception(_api_error(answer["error"]))
            else:
                future.set_result(PubAck.from_response(answer))
        except (ValueError, TypeError, KeyError) as exc:
            future.set_exception(APIError(description=f"unreadable publish ack: {exc}"))
