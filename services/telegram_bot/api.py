"""A thin aiohttp adapter for the two Bot API methods the bot uses: ``getUpdates`` (long
polling with an offset that confirms what was handled) and ``sendMessage``.

The token is part of every URL (``<api_url>/bot<token>/<method>``), so no URL, request or
aiohttp exception text leaves this module unredacted: errors carry the API's own
description or the exception's type and text with the token blanked.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec

REDACTED = "<token>"
SLACK_S = 10.0
"""A long poll's HTTP timeout: the poll's own timeout plus this."""


class User(msgspec.Struct, frozen=True):
    id: int
    is_bot: bool = False
    first_name: str = ""
    username: str = ""


class Chat(msgspec.Struct, frozen=True):
    id: int
    type: str = "private"
    title: str = ""
    username: str = ""


class Message(msgspec.Struct, frozen=True, rename={"sender": "from"}):
    message_id: int
    date: int
    chat: Chat
    sender: User | None = None
    text: str = ""


class Update(msgspec.Struct, frozen=True):
    """One update; the bot reads ``message`` only (an edited message is not a command)."""

    update_id: int
    message: Message | None = None


class Polled(msgspec.Struct, frozen=True):
    """A polled update: ``update`` is None when it did not have the shape above (it is
    confirmed and skipped, never retried)."""

    update_id: int
    update: Update | None


class _Parameters(msgspec.Struct, frozen=True):
    retry_after: float | None = None
    migrate_to_chat_id: int | None = None


class _Reply(msgspec.Struct, frozen=True):
    ok: bool
    result: msgspec.Raw = msgspec.Raw(b"null")
    error_code: int = 0
    description: str = ""
    parameters: _Parameters | None = None


class ApiError(Exception):
    """A failed call: ``code`` is the HTTP/API error code (0 = no answer: network, timeout,
    an undecodable body); ``retry_after`` is Telegram's wait for a 429."""

    def __init__(self, code: int, description: str, retry_after: float | None = None) -> None:
        super().__init__(f"{code or 'network'}: {description}")
        self.code = code
        self.description = description
        self.retry_after = retry_after


def polled(items: list[Any]) -> list[Polled]:
    """Each raw update decoded on its own, so one malformed update cannot hide the others;
    one without even an integer ``update_id`` cannot be confirmed and is dropped."""
    out = []
    for item in items:
        try:
            out.append(Polled(item["update_id"], msgspec.convert(item, Update)))
        except msgspec.ValidationError:
            uid = item.get("update_id") if isinstance(item, dict) else None
            if isinstance(uid, int) and not isinstance(uid, bool):
                out.append(Polled(uid, None))
        except (KeyError, TypeError):
            continue
    return out


class BotApi:
    def __init__(self, api_url: str, token: str, session: aiohttp.ClientSession) -> None:
        self._base = f"{api_url.rstrip('/')}/bot{token}/"
        self._token = token
        self._session = session

    def _redact(self, text: str) -> str:
        return text.replace(self._token, REDACTED) if self._token else text

    async def _call(self, method: str, payload: dict[str, Any], timeout_s: float) -> msgspec.Raw:
        try:
            async with self._session.post(
                self._base + method,
                json=payload,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiError(0, self._redact(f"{type(exc).__name__}: {exc}")) from None
        try:
            reply = msgspec.json.decode(body, type=_Reply)
        except msgspec.DecodeError:
            raise ApiError(status, f"HTTP {status}, not a Bot API answer") from None
        if not reply.ok:
            retry = reply.parameters.retry_after if reply.parameters else None
            code = reply.error_code or status
            raise ApiError(code, self._redact(reply.description or f"HTTP {status}"), retry)
        return reply.result

    async def get_updates(self, offset: int | None, timeout_s: int) -> list[Polled]:
        """Updates after ``offset`` (which confirms every earlier one), waiting up to
        ``timeout_s`` for the first."""
        payload: dict[str, Any] = {"timeout": timeout_s, "allowed_updates": ["message"]}
        if offset is not None:
            payload["offset"] = offset
        raw = await self._call("getUpdates", payload, timeout_s + SLACK_S)
        try:
            items = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise ApiError(0, "getUpdates: undecodable result") from None
        if not isinstance(items, list):
            raise ApiError(0, "getUpdates: result is not a list")
        return polled(items)

    async def send_message(self, chat_id: int, text: str, timeout_s: float = 30.0) -> None:
        await self._call("sendMessage", {"chat_id": chat_id, "text": text}, timeout_s)

    async def get_me(self) -> str:
        """The bot's username (commands in groups may be addressed as /status@name)."""
        raw = await self._call("getMe", {}, 30.0)
        try:
            return msgspec.json.decode(raw, type=User).username
        except msgspec.DecodeError:
            raise ApiError(0, "getMe: undecodable result") from None
