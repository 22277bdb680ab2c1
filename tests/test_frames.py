"""Replay frames carry events byte for byte, and cover every kind of subject a worker
publishes; the driver cuts market events into frames with an explicit last one."""

from __future__ import annotations

from functools import partial

from contracts.codec import decode, encode
from contracts.envelope import bar_envelope
from contracts.subjects import subject_for
from eventstore.frames import (
    MARKET_KIND,
    OUTPUT_KINDS,
    Frame,
    FramedEvent,
    PlanStep,
    decode_frame,
    encode_frame,
    kind_of,
)
from replay.bus_replay import _chunks
from tests.factories import ohlc_bar
from tests.test_subjects import EXAMPLES

_bar = partial(
    ohlc_bar, open=100.0, high=101.0, low=99.0, close=100.5, volume=3.0, venue="sim", start=0
)


def test_a_frame_round_trips_events_byte_for_byte() -> None:
    bars = [_bar(i) for i in range(3)]
    frame = Frame(
        [FramedEvent(subject_for(b), bar_envelope(b), "", encode(b)) for b in bars],
        {"risk": [PlanStep(1, ["a", "b"])]},
        last=True,
    )
    back = decode_frame(encode_frame(frame))
    assert back == frame
    assert [decode(item.data) for item in back.events] == bars
    assert [item.data for item in back.events] == [encode(b) for b in bars]


def test_output_kinds_cover_every_published_subject() -> None:
    kinds = {kind_of(subject) for _, subject in EXAMPLES}
    assert kinds - {MARKET_KIND, "ext"} <= set(OUTPUT_KINDS)


def test_chunks_mark_the_last_frame_and_send_one_for_an_empty_run() -> None:
    bars = [_bar(i) for i in range(5)]
    assert [(len(c), last) for c, last in _chunks(bars, 2)] == [(2, False), (2, False), (1, True)]
    assert [(len(c), last) for c, last in _chunks(bars[:4], 2)] == [(2, False), (2, True)]
    assert list(_chunks([], 2)) == [([], True)]
