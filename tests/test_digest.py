"""replay/digest.py: the batched producer hash equals the event-by-event definition."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.codec import encode
from contracts.events import DeadLetter, Event, Signal
from replay import digest as digest_module
from replay.digest import ProducerDigest
from tests.portfolio_helpers import snap


def naive(outputs: list[tuple[str, Event]]) -> str:
    """The definition: subject, newline, JSON payload, newline, one event after another."""
    h = hashlib.sha256()
    for subject, event in outputs:
        h.update(subject.encode() + b"\n" + encode(event) + b"\n")
    return h.hexdigest()


def signal(ts: int, reason: str) -> Signal:
    return Signal(
        ts=ts,
        strategy="s",
        venue="sim",
        symbol="BTC/USDT",
        model_tag="m",
        target_position=1.0,
        reason=reason,
    )


# reasons with newlines, quotes and non-ASCII: JSON escapes them, so no raw newline remains
texts = st.text(alphabet=st.sampled_from('ab\n"\\é€\t'), max_size=8)
outputs = st.lists(
    st.one_of(
        st.builds(
            lambda ts, e: ("pf.equity", snap(ts, e)),
            st.integers(1, 10**18),
            st.floats(-1e12, 1e12),
        ),
        st.builds(
            lambda ts, r: ("sig.s.sim.BTC-USDT", signal(ts, r)), st.integers(1, 10**18), texts
        ),
        st.builds(
            lambda ts, r: (
                "sys.dlq.x",
                DeadLetter(ts=ts, worker="x", subject="a\nb", reason=r, payload=b"\n"),
            ),
            st.integers(1, 10**18),
            texts,
        ),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(outputs)
def test_batched_equals_event_by_event(items: list[tuple[str, Event]]) -> None:
    d = ProducerDigest()
    for subject, event in items:
        d.add(subject, event)
    assert d.hexdigest() == naive(items)


def test_batch_boundary_and_hexdigest_mid_run(monkeypatch) -> None:
    """Runs longer than BATCH are hashed in pieces; asking for the digest mid-run and going
    on gives the same bytes as never asking."""
    monkeypatch.setattr(digest_module, "BATCH", 3)
    items = [("pf.equity", snap(i, float(i))) for i in range(1, 11)]
    d = ProducerDigest()
    for n, (subject, event) in enumerate(items, 1):
        d.add(subject, event)
        if n == 5:
            assert d.hexdigest() == naive(items[:5])
    assert d.hexdigest() == naive(items)


def test_empty() -> None:
    assert ProducerDigest().hexdigest() == hashlib.sha256().hexdigest()
