"""Frames: how events travel inside a bus replay.

A bus replay moves a million bars through four worker processes; one NATS message per event
would spend most of the time in per-message overhead (protocol parsing, headers, acks). In a
replay namespace events therefore travel in frames: one message holding many events, each
with its subject, envelope, producer and the exact JSON bytes a live message would carry, so
the events (and the result hash over them) are byte for byte those of a live run.

Market frames also carry the replay plan: for every worker, which cascade events it must
handle after which market event (``replay/plan.py``). Frame subjects are
``rp.<ns>.f.<kind>.<producer>``, where kind is the first token of the events' subjects
(``md``, ``sig``, ``ord``, ``exec``, ``pf``, ``sys``), so a worker subscribes to the kinds it
consumes and nobody but the driver reads the portfolio's equity frames.
"""

from __future__ import annotations

import msgspec

from contracts.envelope import Envelope
from eventstore.streams import REPLAY_PREFIX

MARKET_KIND = "md"
FRAME_EVENTS = 256
"""Events per frame at most; a worker also sends a shorter frame whenever it must wait."""


class FramedEvent(msgspec.Struct, frozen=True, array_like=True):
    subject: str
    envelope: Envelope
    producer: str
    data: bytes


class PlanStep(msgspec.Struct, frozen=True, array_like=True):
    """After the frame's event number ``after``, handle these cascade events, in order."""

    after: int
    ids: list[str]


class Frame(msgspec.Struct, frozen=True, array_like=True):
    events: list[FramedEvent]
    plan: dict[str, list[PlanStep]] = {}
    last: bool = False


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Frame)


def encode_frame(frame: Frame) -> bytes:
    return _encoder.encode(frame)


def decode_frame(data: bytes) -> Frame:
    return _decoder.decode(data)


def kind_of(subject: str) -> str:
    return subject.partition(".")[0]


def frame_prefix(namespace: str) -> str:
    return f"{REPLAY_PREFIX}.{namespace}.f."


def frame_subject(namespace: str, kind: str, producer: str) -> str:
    return f"{frame_prefix(namespace)}{kind}.{producer}"


OUTPUT_KINDS = ("sig", "ord", "exec", "pf", "gov", "sys", "venue")
"""Kinds of the events workers publish (``venue``: the execution worker's legs for a gateway
venue). The others, market data (``md``) and external events (``ext``), are facts from
outside, like a gateway's recorded answers: the driver feeds them in market frames."""
