"""The TWS API socket framing: a 4-byte big-endian length, then null-terminated text fields.

The handshake is the one exception: the client opens with ``API\\0`` before its first framed
message (the version range ``v157..178``). Values follow IB's conventions as ib_async reads
them: an unset double or integer is an empty field, booleans are ``1``/``0``, whole numbers
have no decimal point.
"""

from __future__ import annotations

import asyncio
import math
import struct
import sys
from collections.abc import Iterable

UNSET_DOUBLE = sys.float_info.max
UNSET_INTEGER = 2**31 - 1
MAX_FRAME = 1 << 24
Field = str | int | float | bool | None


class WireError(Exception):
    """The peer sent something that is not the TWS protocol."""


def text(value: Field) -> str:
    """One field as TWS writes it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return "" if value == UNSET_INTEGER else str(value)
    if isinstance(value, float):
        if value == UNSET_DOUBLE or math.isnan(value):
            return ""
        if value == math.inf:
            return "Infinite"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    return value


def frame(fields: Iterable[Field]) -> bytes:
    body = "".join(text(f) + "\0" for f in fields).encode()
    return struct.pack(">I", len(body)) + body


def split(body: bytes) -> list[str]:
    fields = body.decode(errors="replace").split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    return fields


async def read_frame(reader: asyncio.StreamReader) -> list[str]:
    """The next message's fields; ``IncompleteReadError`` when the peer has gone."""
    size = struct.unpack(">I", await reader.readexactly(4))[0]
    if size > MAX_FRAME:
        raise WireError(f"frame of {size} bytes")
    return split(await reader.readexactly(size))


async def read_hello(reader: asyncio.StreamReader) -> tuple[int, int]:
    """The client's ``API\\0`` and version range, as (min, max)."""
    if await reader.readexactly(4) != b"API\0":
        raise WireError("no API prefix")
    fields = await read_frame(reader)
    if not fields or not fields[0].startswith("v"):
        raise WireError(f"bad version range {fields!r}")
    lo, _, hi = fields[0][1:].split(" ")[0].partition("..")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise WireError(f"bad version range {fields[0]!r}") from None


def number(value: str, default: float = 0.0) -> float:
    """A double field; empty means unset."""
    return float(value) if value not in ("", "Infinite") else default


def integer(value: str, default: int = 0) -> int:
    return int(value) if value else default


def flag(value: str) -> bool:
    return value not in ("", "0")
