"""Every decoder Keel applies to bytes it did not write, fed generated garbage in process.

Each decoder may accept an input or refuse it with its own error and a reason; any other
exception is a crash (in a worker, a dead letter that says "worker error"; in the command
line, a traceback instead of one line). The decoders: the event codec, the envelope from
headers, bar subjects, intervals, the bus replay's msgpack frames, the fleet config (TOML
and JSON), bar files (CSV) and a replay's events files (JSONL).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

from cli.console import USER_ERRORS
from contracts.codec import DecodeError, decode, encode
from contracts.envelope import (
    CAUSATION_ID,
    CORRELATION_ID,
    EVENT_TIME,
    MSG_ID,
    SCHEMA,
    Envelope,
    bar_envelope,
)
from contracts.events import (
    Bar,
    ListingAnnouncement,
    ParamsTuned,
    PromoAnnouncement,
    SocialSentiment,
)
from contracts.intervals import Interval
from contracts.subjects import parse_bar_subject
from eventstore.frames import Frame, FramedEvent, decode_frame, encode_frame
from replay.external import EventFile, read_events
from services.config import load_config
from services.marketdata.sources import read_bars
from tests.malformed import SAMPLES, TOKEN, Generator, mutate

ROOT = Path(__file__).resolve().parents[1]
MSGSPEC_ERRORS = (msgspec.DecodeError, msgspec.ValidationError)


class DecoderRow(msgspec.Struct):
    decoder: str
    inputs: int = 0
    accepted: int = 0
    refused: int = 0
    empty_reasons: int = 0
    crashes: int = 0
    first_crash: str = ""


def fuzz_decoder(
    name: str,
    decoder: Callable[[object], object],
    inputs: Iterator[object],
    refusals: tuple[type[BaseException], ...],
) -> DecoderRow:
    """Feed every input; count acceptances, refusals with a reason, and crashes."""
    row = DecoderRow(name)
    for value in inputs:
        row.inputs += 1
        try:
            decoder(value)
        except refusals as exc:
            row.refused += 1
            if not str(exc).strip():
                row.empty_reasons += 1
        except Exception as exc:  # the finding: a decoder that fails some other way
            row.crashes += 1
            row.first_crash = row.first_crash or f"{type(exc).__name__}: {exc} on {value!r:.200}"
        else:
            row.accepted += 1
    return row


def _text(rng: random.Random, size: int = 12) -> str:
    alphabet = TOKEN + " ./:*>\x00\u00e9\u4e2d\U0001f600"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, size)))


def event_bytes(rng: random.Random, count: int) -> Iterator[bytes]:
    """Malformed messages of every input kind, mutated encodings of every event type and
    random bytes, a third each."""
    patterns = ("md.bar.>", "sig.>", "exec.>", "ord.cmd.>", "gov.cmd.>", "md.instrument.>")
    third = count // 3
    per = max(1, third // len(patterns))
    made = 0
    for pattern in patterns:
        for message in Generator(pattern, rng.randrange(2**32)).messages(per, "decoder"):
            made += 1
            yield message.data
    samples = [encode(e) for e in SAMPLES.values()]
    for _ in range(third):
        made += 1
        yield mutate(rng, rng.choice(samples), 6)
    while made < count:
        made += 1
        yield rng.randbytes(rng.randint(0, 200))


def header_maps(rng: random.Random, count: int) -> Iterator[dict[str, str] | None]:
    keys = (MSG_ID, CAUSATION_ID, CORRELATION_ID, EVENT_TIME, SCHEMA, "traceparent", "X")
    numbers = ("0", "-1", "1.5", "1e9", str(2**63), "9" * 40, "", " 7", "0x1f", "\u0661")
    for _ in range(count):
        if rng.random() < 0.02:
            yield None
            continue
        headers = {}
        for key in rng.sample(keys, rng.randint(0, len(keys))):
            numeric = key in (EVENT_TIME, SCHEMA) and rng.random() < 0.6
            headers[key] = rng.choice(numbers) if numeric else _text(rng)
        yield headers


def subjects(rng: random.Random, count: int) -> Iterator[str]:
    for _ in range(count):
        tokens = ["md", "bar"][: rng.randint(0, 2)]
        tokens += [_text(rng, 8) for _ in range(rng.randint(0, 5))]
        yield ".".join(tokens)


def intervals(rng: random.Random, count: int) -> Iterator[str]:
    units = ("s", "m", "h", "d", "w", "M", "y", "ms", "", "x")
    for _ in range(count):
        if rng.random() < 0.5:
            yield f"{rng.choice(['', '-', '0', '00'])}{rng.randint(0, 10 ** rng.randint(0, 20))}{rng.choice(units)}"
        else:
            yield _text(rng, 6)


def frames(rng: random.Random, count: int) -> Iterator[bytes]:
    bar = SAMPLES[Bar]
    assert isinstance(bar, Bar)
    framed = FramedEvent("md.bar.test.BTC-USDT.1m", bar_envelope(bar), "", encode(bar))
    valid = encode_frame(Frame([framed, framed], last=True))
    for _ in range(count):
        yield mutate(rng, valid, 6) if rng.random() < 0.8 else rng.randbytes(rng.randint(0, 99))


CONFIG_TOML = ROOT / "infra" / "keel.toml"


def config_files(rng: random.Random, count: int, tmp: Path) -> Iterator[Path]:
    """Mutated copies of ``infra/keel.toml`` and of its JSON form, one file rewritten."""
    text = CONFIG_TOML.read_bytes()
    as_json = msgspec.json.encode(load_config(CONFIG_TOML))
    for i in range(count):
        path = tmp / ("keel.json" if i % 4 == 3 else "keel.toml")
        path.write_bytes(mutate(rng, as_json if i % 4 == 3 else text, 8))
        yield path


BAR_CSV = b"""open_time,open,high,low,close,volume
2024-01-01T00:00:00Z,100,101,99,100.5,3
2024-01-01T00:01:00Z,100.5,102,100,101,2
2024-01-01T00:02:00Z,101,101.5,100.2,100.8,4.5
2024-01-01T00:03:00Z,100.8,101,99.9,100,1
"""


def bar_files(rng: random.Random, count: int, tmp: Path) -> Iterator[Path]:
    path = tmp / "bars.csv"
    for _ in range(count):
        path.write_bytes(mutate(rng, BAR_CSV, 8))
        yield path


def events_files(rng: random.Random, count: int, tmp: Path) -> Iterator[Path]:
    """Mutated JSONL events files of a replay (external events and parameter changes)."""
    kinds = (ListingAnnouncement, SocialSentiment, PromoAnnouncement, ParamsTuned)
    valid = b"\n".join(encode(SAMPLES[k]) for k in kinds) + b"\n"
    path = tmp / "events.jsonl"
    for _ in range(count):
        path.write_bytes(mutate(rng, valid, 8))
        yield path


def _read_events(path: object) -> object:
    assert isinstance(path, Path)
    return list(read_events(EventFile(str(path))))


def _read_bars(path: object) -> object:
    assert isinstance(path, Path)
    return read_bars(path, venue="test", symbol="BTC/USDT")


def decoder_rows(count: int, seed: int, tmp: Path, files: int | None = None) -> list[DecoderRow]:
    """``count`` inputs for each in-memory decoder, ``files`` (default ``count``) for the
    file decoders, written under ``tmp``."""
    rng = random.Random(seed)
    files = count if files is None else files
    return [
        fuzz_decoder("contracts.codec.decode", decode, event_bytes(rng, count), (DecodeError,)),
        fuzz_decoder(
            "Envelope.from_headers", Envelope.from_headers, header_maps(rng, count), (ValueError,)
        ),
        fuzz_decoder(
            "subjects.parse_bar_subject", parse_bar_subject, subjects(rng, count), USER_ERRORS
        ),
        fuzz_decoder("Interval.parse", Interval.parse, intervals(rng, count), USER_ERRORS),
        fuzz_decoder("frames.decode_frame", decode_frame, frames(rng, count), MSGSPEC_ERRORS),
        fuzz_decoder("config.load_config", load_config, config_files(rng, files, tmp), USER_ERRORS),
        fuzz_decoder(
            "sources.read_bars (CSV)", _read_bars, bar_files(rng, files, tmp), USER_ERRORS
        ),
        fuzz_decoder(
            "external.read_events (JSONL)", _read_events, events_files(rng, files, tmp), USER_ERRORS
        ),
    ]
