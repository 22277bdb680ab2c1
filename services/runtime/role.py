"""A role: what one worker is, independent of how it runs (live worker or replay engine)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from services.runtime.decider import Decider


class Input(msgspec.Struct, frozen=True):
    """One durable consumer: a stream and the subjects the worker wants from it."""

    stream: str
    subjects: tuple[str, ...]


def durable_name(worker: str, stream: str) -> str:
    """The durable consumer through which ``worker`` reads ``stream``."""
    return f"{worker}-{stream.lower()}"


@dataclass(frozen=True)
class Role:
    """A worker's name, its inputs and its decision logic: the live runtime consumes the
    inputs from JetStream, the replay engine routes the same subjects in memory."""

    name: str
    inputs: tuple[Input, ...]
    decider: Decider
