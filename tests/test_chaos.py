"""The chaos harness in CI (``bench/chaos.py``): the same code path as the bench, on a short
generated market, one seed per scenario and one fault per run. Every stored bar, signal,
order, execution report and position change must match the uninterrupted run by id and
content: 0 lost, 0 duplicated, 0 differing."""

from __future__ import annotations

from bench.chaos_compare import Log, Record, compare
from bench.chaos_faults import ACK_WAIT_S, SCENARIOS, plan

BARS = 160
WORKERS = ["portfolio", "execution", "risk", "strategy-ma_cross"]


def record(id_: str, data: bytes, subject: str = "sig.s.v.BTC-USDT") -> Record:
    return Record(id_, subject, data, "cause", "root", "1")


def test_compare_counts_lost_duplicated_differing_and_extra_events() -> None:
    baseline = Log({"signals": [record("a", b"1"), record("b", b"2"), record("c", b"3")]}, 0)
    run = Log(
        {
            "signals": [
                record("a", b"1"),
                record("a", b"1"),  # the same id stored twice
                record("b", b"changed"),  # same id, other content
                record("c", b"3"),
                record("c2", b"3"),  # a baseline event's content under another id
                record("d", b"4"),  # a decision the baseline never made
            ]
        },
        2,
    )
    counts = compare(baseline, run)
    assert (counts.compared, counts.lost, counts.duplicated, counts.differing, counts.extra) == (
        6,
        0,
        2,
        1,
        1,
    )
    assert counts.dead_letters == 2 and not counts.clean
    lost = compare(baseline, Log({"signals": [record("a", b"1")]}, 0))
    assert (lost.lost, lost.duplicated, lost.differing, lost.extra) == (2, 0, 0, 0)
    assert compare(baseline, baseline).clean


def test_a_seed_names_the_same_faults_and_stops_outlast_ack_wait() -> None:
    for scenario in SCENARIOS:
        first = plan(scenario, 3, 30_240, WORKERS)
        assert first == plan(scenario, 3, 30_240, WORKERS)
        assert first != plan(scenario, 4, 30_240, WORKERS)
        assert all(30_240 // 20 <= f.at_bar <= 30_240 * 9 // 10 for f in first)
    stops = plan("sigstop", 1, 1000, WORKERS)
    assert stops and all(f.down_s > ACK_WAIT_S and f.target in WORKERS for f in stops)
    cluster = plan("cluster-node", 1, 1000, WORKERS)
    assert [f.kind for f in cluster] == ["kill-node", "kill-leader"]
