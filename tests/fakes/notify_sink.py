"""A loopback HTTP server recording what Apprise sends: a generic JSON webhook (``json://``:
``{"version", "title", "message", "type"}`` on any path) and the Telegram Bot API's
``sendMessage`` at ``/bot<token>/sendMessage`` (point ``tgram://`` at it with the
destination's ``api_base``). ``failing`` makes it answer 500 until cleared."""

from __future__ import annotations

import json
import time

import msgspec
from aiohttp import web


class Received(msgspec.Struct, frozen=True):
    kind: str  # "json" or "telegram"
    path: str
    title: str
    body: str
    type: str
    at: float  # time.monotonic()
    raw: bytes


class NotifySink:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.refused = 0
        self.failing = False
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> NotifySink:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)  # paths carry the bot token
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def titles(self) -> list[str]:
        return [r.title for r in self.received]

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if self.failing:
            self.refused += 1
            return web.json_response({"ok": False, "description": "sink failing"}, status=500)
        data = json.loads(raw or b"{}")
        now = time.monotonic()
        if request.path.startswith("/bot") and request.path.endswith("/sendMessage"):
            text = str(data.get("text", ""))
            title, _, body = text.partition("\r\n")
            self.received.append(Received("telegram", request.path, title, body, "", now, raw))
            result = {"message_id": len(self.received), "chat": {"id": data.get("chat_id")}}
            return web.json_response({"ok": True, "result": result})
        self.received.append(
            Received(
                "json",
                request.path,
                str(data.get("title", "")),
                str(data.get("message", "")),
                str(data.get("type", "")),
                now,
                raw,
            )
        )
        return web.json_response({})
