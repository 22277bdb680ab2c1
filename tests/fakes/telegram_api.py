"""A loopback fake of the Telegram Bot API: ``getMe``, ``getUpdates`` (offset confirms,
long polling waits up to ``timeout`` seconds for an update) and ``sendMessage``, at
``/bot<token>/<method>``, with the real JSON shapes (``{"ok": ..., "result": ...}``, an error's
``error_code``/``description`` and a 429's ``parameters.retry_after``).

Tests queue messages as a chat would send them (``message``), or any raw update
(``raw_update``), queue faults for a method (``fail_next``), and read what the bot answered
(``sent``) and when each method was called (``calls``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from aiohttp import web

BOT_ID = 7_000_000_001
BOT_USERNAME = "keel_test_bot"
DESCRIPTIONS = {
    400: "Bad Request: chat not found",
    401: "Unauthorized",
    409: "Conflict: terminated by other getUpdates request; make sure that only one bot "
    "instance is running",
    429: "Too Many Requests: retry after {retry_after}",
    502: "Bad Gateway",
}


class Sent(msgspec.Struct, frozen=True):
    chat_id: int
    text: str
    at: float  # time.monotonic()


class Call(msgspec.Struct, frozen=True):
    method: str
    at: float
    status: int
    offset: int | None = None


class Fault(msgspec.Struct, frozen=True):
    status: int
    retry_after: int | None = None


class FakeTelegram:
    def __init__(self, token: str) -> None:
        self.token = token
        self.updates: list[dict[str, Any]] = []
        self.sent: list[Sent] = []
        self.calls: list[Call] = []
        self.faults: dict[str, list[Fault]] = {}
        self._next_update = 100_000
        self._next_message = 1
        self._arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.api_url = ""

    async def start(self) -> FakeTelegram:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.api_url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        self._arrived.set()  # ends any long poll still waiting, so cleanup need not wait it out
        if self._runner is not None:
            await self._runner.cleanup()

    # --- what a test does ------------------------------------------------------------------

    def message(
        self, chat_id: int, text: str, *, username: str = "", date: int | None = None
    ) -> int:
        """A private chat's text message (the chat id is the user's id); its update id."""
        sender: dict[str, Any] = {"id": chat_id, "is_bot": False, "first_name": "Op"}
        chat: dict[str, Any] = {"id": chat_id, "first_name": "Op", "type": "private"}
        if username:
            sender["username"] = chat["username"] = username
        message: dict[str, Any] = {
            "message_id": self._next_message,
            "from": sender,
            "chat": chat,
            "date": int(time.time()) if date is None else date,
            "text": text,
        }
        if text.startswith("/"):
            length = len(text.split(" ", 1)[0])
            message["entities"] = [{"offset": 0, "length": length, "type": "bot_command"}]
        self._next_message += 1
        return self.raw_update({"message": message})

    def raw_update(self, body: dict[str, Any]) -> int:
        """Any update body (a malformed one too); the fake gives it the next update id unless
        it has one."""
        update = dict(body)
        update.setdefault("update_id", self._next_update)
        self._next_update = max(self._next_update, int(update["update_id"])) + 1
        self.updates.append(update)
        self._arrived.set()
        return int(update["update_id"])

    def fail_next(self, method: str, status: int, retry_after: int | None = None) -> None:
        self.faults.setdefault(method, []).append(Fault(status, retry_after))

    def to(self, chat_id: int) -> list[str]:
        return [s.text for s in self.sent if s.chat_id == chat_id]

    async def wait_sent(self, count: int, timeout: float = 20.0) -> list[Sent]:
        deadline = time.monotonic() + timeout
        while len(self.sent) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.sent)} answers, not {count}: {self.sent}")
            await asyncio.sleep(0.02)
        return list(self.sent)

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    # --- the API -----------------------------------------------------------------------------

    @staticmethod
    def _reply(result: Any) -> web.Response:
        return web.json_response({"ok": True, "result": result})

    @staticmethod
    def _error(status: int, retry_after: int | None = None) -> web.Response:
        body: dict[str, Any] = {
            "ok": False,
            "error_code": status,
            "description": DESCRIPTIONS.get(status, "Error").format(retry_after=retry_after),
        }
        if retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
        return web.json_response(body, status=status)

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                params.update(await request.json())
            else:
                params.update(dict(await request.post()))
        return params

    async def _dispatch(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            self.calls.append(Call(method, time.monotonic(), 401))
            return self._error(401)
        params = await self._params(request)
        offset = int(params["offset"]) if "offset" in params else None
        queued = self.faults.get(method)
        if queued:
            fault = queued.pop(0)
            self.calls.append(Call(method, time.monotonic(), fault.status, offset))
            return self._error(fault.status, fault.retry_after)
        self.calls.append(Call(method, time.monotonic(), 200, offset))
        if method == "getMe":
            return self._reply(
                {"id": BOT_ID, "is_bot": True, "first_name": "Keel", "username": BOT_USERNAME}
            )
        if method == "getUpdates":
            return self._reply(await self._get_updates(offset, params))
        if method == "sendMessage":
            return self._send(params)
        return web.json_response(
            {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
        )

    async def _get_updates(self, offset: int | None, params: dict[str, Any]) -> list[Any]:
        if offset is not None:
            if offset < 0:
                self.updates = self.updates[offset:]
            else:
                self.updates = [u for u in self.updates if u["update_id"] >= offset]
        limit = int(params.get("limit", 100))
        timeout = float(params.get("timeout", 0))
        if not self.updates and timeout > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                return []
        return self.updates[:limit]

    def _send(self, params: dict[str, Any]) -> web.Response:
        if "chat_id" not in params or not str(params.get("text", "")).strip():
            return web.json_response(
                {
                    "ok": False,
                    "error_code": 400,
                    "description": "Bad Request: message text is empty",
                },
                status=400,
            )
        chat_id = int(params["chat_id"])
        text = str(params["text"])
        self.sent.append(Sent(chat_id, text, time.monotonic()))
        return self._reply(
            {
                "message_id": self._next_message,
                "from": {
                    "id": BOT_ID,
                    "is_bot": True,
                    "first_name": "Keel",
                    "username": BOT_USERNAME,
                },
                "chat": {"id": chat_id, "type": "private"},
                "date": int(time.time()),
                "text": text,
            }
        )
