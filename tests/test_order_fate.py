"""The unknown-order rule: query at once, spread the misses, conclude only after enough of
them over the whole window; found means its real state; an acknowledged leg never resubmits."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.venues.journal import Leg, Query, VenueJournal
from services.venues.order_fate import FateRule, decide, doubt_start
from tests.test_venue_journal import SEC, T0, VENUE, answer, order

START = T0 + SEC


def unknown_leg(*queries: tuple[int, bool], acknowledged: bool = False) -> Leg:
    """A leg whose submit timed out at START, with queries at START + seconds."""
    leg = order()
    j = VenueJournal(VENUE)
    j.apply(leg)
    if acknowledged:
        j.apply(answer(leg, "accepted", source="stream", ts=T0, venue_order_id="v1"))
        j.apply(answer(leg, "unknown", source="cancel", ts=START))
    else:
        j.apply(answer(leg, "unknown", source="submit", ts=START, reason="timeout"))
    for seconds, found in queries:
        kind = "accepted" if found else "unknown"
        j.apply(answer(leg, kind, source="query", ts=START + seconds * SEC))
    state = j.leg(leg.venue_client_id)
    assert state is not None
    return state


RULE = FateRule(queries=3, within_s=30.0, then="resubmit")


def test_first_query_at_once_then_spread_over_the_window() -> None:
    leg = unknown_leg()
    assert doubt_start(leg) == START
    assert RULE.decide(leg, leg.queries, START) == "query"
    leg = unknown_leg((0, False))
    assert RULE.decide(leg, leg.queries, START + 14 * SEC) == "wait"
    assert RULE.decide(leg, leg.queries, START + 15 * SEC) == "query"
    assert RULE.next_query_at(leg, leg.queries) == START + 15 * SEC
    leg = unknown_leg((0, False), (15, False))
    assert RULE.decide(leg, leg.queries, START + 29 * SEC) == "wait"
    assert RULE.decide(leg, leg.queries, START + 30 * SEC) == "query"


def test_enough_misses_over_the_window_conclude_with_the_configured_verdict() -> None:
    leg = unknown_leg((0, False), (15, False), (30, False))
    assert RULE.decide(leg, leg.queries, START + 30 * SEC) == "resubmit"
    fail = FateRule(queries=3, within_s=30.0, then="fail")
    assert decide(fail, leg, leg.queries, START + 31 * SEC) == "fail"


def test_quick_misses_do_not_conclude_before_the_window_ends() -> None:
    """Binance can list a new order late: three misses in two seconds prove nothing."""
    leg = unknown_leg((0, False), (1, False), (2, False))
    assert RULE.decide(leg, leg.queries, START + 3 * SEC) == "wait"
    assert RULE.next_query_at(leg, leg.queries) == START + 30 * SEC
    assert RULE.decide(leg, leg.queries, START + 30 * SEC) == "query"
    leg = unknown_leg((0, False), (1, False), (2, False), (30, False))
    assert RULE.decide(leg, leg.queries, START + 30 * SEC) == "resubmit"


def test_found_at_any_query_is_its_real_state() -> None:
    leg = unknown_leg((0, False), (15, False), (30, True))
    assert leg.state == "working"
    assert RULE.decide(leg, leg.queries, START + 60 * SEC) == "wait"


def test_a_leg_the_venue_acknowledged_is_never_resubmitted() -> None:
    leg = unknown_leg((0, False), (15, False), (30, False), acknowledged=True)
    assert leg.state == "working" and leg.in_doubt()
    assert RULE.decide(leg, leg.queries, START + 30 * SEC) == "fail"


def test_a_leg_not_in_doubt_waits() -> None:
    j = VenueJournal(VENUE)
    leg = order()
    j.apply(leg)
    j.apply(answer(leg, "accepted", venue_order_id="v1"))
    state = j.leg(leg.venue_client_id)
    assert state is not None and RULE.decide(state, [], START + 999 * SEC) == "wait"


def test_a_sent_leg_without_an_answer_counts_from_when_it_was_sent() -> None:
    """A gateway that died between submit and acknowledgement finds the leg ``sent``."""
    j = VenueJournal(VENUE)
    leg = order(ts=T0)
    j.apply(leg)
    state = j.leg(leg.venue_client_id)
    assert state is not None and doubt_start(state) == T0
    assert RULE.decide(state, [], T0 + SEC) == "query"


def test_one_query_rule_waits_for_the_window() -> None:
    one = FateRule(queries=1, within_s=10.0, then="fail")
    leg = unknown_leg()
    assert one.decide(leg, leg.queries, START + 9 * SEC) == "wait"
    assert one.decide(leg, leg.queries, START + 10 * SEC) == "query"
    leg = unknown_leg((10, False))
    assert one.decide(leg, leg.queries, START + 10 * SEC) == "fail"


def test_bad_rules_are_refused() -> None:
    for queries, within in ((0, 1.0), (2, -1.0)):
        try:
            FateRule(queries=queries, within_s=within)
        except ValueError as exc:
            assert "unknown_" in str(exc)
        else:
            raise AssertionError("a bad rule was accepted")


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 6),
    st.floats(0.0, 120.0),
    st.lists(st.integers(0, 200_000), max_size=10),
    st.integers(0, 300_000),
)
def test_never_concludes_absent_from_too_few_or_too_close_misses(
    queries: int, within_s: float, miss_ms: list[int], now_ms: int
) -> None:
    rule = FateRule(queries=queries, within_s=within_s, then="resubmit")
    leg = unknown_leg()
    results = [Query(START + ms * 1_000_000, found=False) for ms in miss_ms]
    verdict = rule.decide(leg, results, START + now_ms * 1_000_000)
    if verdict in ("resubmit", "fail"):
        assert len(results) >= queries
        assert max(miss_ms) * 1_000_000 >= round(within_s * SEC)
    else:
        concluded = len(results) >= queries and max(miss_ms, default=0) * 1_000_000 >= round(
            within_s * SEC
        )
        assert not concluded
