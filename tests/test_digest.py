"""replay/digest.py: the batched producer hash equals the pair-by-pair definition."""

from __future__ import annotations

import hashlib

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events import Event
from contracts.system_events import DeadLetter
from replay import digest as digest_module
from replay.digest import ProducerDigest
from tests.factories import equity_snapshot, signal


def naive(outputs: list[tuple[str, Event]]) -> str:
    """The definition: msgpack of [subject, event], one output after another."""
    h = hashlib.sha256()
    for subject, event in outputs:
        h.update(msgspec.msgpack.encode([subject, event]))
    return h.hexdigest()


# reasons with newlines, quotes and non-ASCII
texts = st.text(alphabet=st.sampled_from('ab\n"\\é€\t'), max_size=8)
outputs = st.lists(
    st.one_of(
        st.builds(
            lambda ts, e: ("pf.equity", equity_snapshot(e, ts=ts)),
            st.integers(1, 10**18),
            st.floats(-1e12, 1e12),
        ),
        st.builds(
            lambda ts, r: (
                "sig.s.sim.BTC-USDT",
                signal(1.0, ts=ts, reason=r, strategy="s", venue="sim", model_tag="m"),
            ),
            st.integers(1, 10**18),
            texts,
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
    max_size=80,  # past 16 pairs the array header grows from one byte to three
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
    for batch in (3, 17):  # batches under 16 and over it: both header sizes
        monkeypatch.setattr(digest_module, "BATCH", batch)
        items = [("pf.equity", equity_snapshot(float(i), ts=i)) for i in range(1, 41)]
        d = ProducerDigest()
        for n, (subject, event) in enumerate(items, 1):
            d.add(subject, event)
            if n == 5:
                assert d.hexdigest() == naive(items[:5])
        assert d.hexdigest() == naive(items)


def test_empty() -> None:
    assert ProducerDigest().hexdigest() == hashlib.sha256().hexdigest()
