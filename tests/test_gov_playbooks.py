"""Playbooks: every rule fires with its numbers, latches and resets as configured, and the
whole is idempotent under redelivery and deterministic under replay."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.governance.playbooks import (
    DailyLossRule,
    DailyPnl,
    DisableStrategy,
    DrawdownRule,
    EnableCommand,
    EnableStrategy,
    EquityUpdate,
    HaltEntries,
    PlaybookConfig,
    PlaybookInput,
    PlaybookState,
    RejectionRule,
    RiskRejection,
    ScaleBudgets,
    budget_factor,
    disabled_strategies,
    entries_halted,
    local_day,
    step,
)

NS = 1_000_000_000
MIN = 60 * NS
T0 = int(datetime(2026, 12, 7, 14, 0, tzinfo=UTC).timestamp()) * NS

CONFIG = PlaybookConfig(
    drawdown=(DrawdownRule(max_drawdown=0.10, reset_below=0.05, scale=0.5, cooldown="30m"),),
    rejections=(RejectionRule(max_rejections=3, window="10m", exclude_reasons=("halted",)),),
    daily_loss=(DailyLossRule(max_loss=500.0, timezone="America/New_York"),),
)


def run(
    inputs: list[PlaybookInput], config: PlaybookConfig = CONFIG, state: PlaybookState | None = None
) -> tuple[PlaybookState, list[tuple[object, ...]]]:
    """Feed inputs in order with ``now`` = their event time, as every runtime does."""
    state = state or PlaybookState()
    out = []
    for event in inputs:
        state, actions = step(config, state, event, event.at)
        out.append(actions)
    return state, out


def equity(i: int, value: float, minute: float, peak: float = 1000.0) -> EquityUpdate:
    return EquityUpdate(id=f"eq-{i}", equity=value, peak=peak, at=T0 + int(minute * MIN))


def test_drawdown_scales_budgets_latched_with_a_cooldown_then_restores() -> None:
    inputs = [
        equity(1, 950, 0),  # 5%: nothing
        equity(2, 890, 1),  # 11% >= 10%: scale by 0.5
        equity(3, 850, 2),  # 15%: latched, nothing more
        equity(4, 970, 10),  # 3% < 5% but only 9 minutes after: held (cooldown 30m)
        equity(5, 940, 35),  # 6%: cooldown over but not below 5%: held
        equity(6, 960, 40),  # 4% < 5%, 39 min after: restored (factor 1)
        equity(7, 880, 41),  # 12%: fires again
    ]
    state, out = run(inputs)
    assert [len(a) for a in out] == [0, 1, 0, 0, 0, 1, 1]
    fired = out[1][0]
    assert isinstance(fired, ScaleBudgets)
    # drawdown = (peak - equity) / peak = (1000 - 890) / 1000 = 0.11
    assert fired.factor == 0.5 and fired.drawdown == pytest.approx(0.11)
    assert (fired.max_drawdown, fired.reset_below, fired.rule) == (0.10, 0.05, "drawdown")
    assert fired.id == "eq-2:drawdown" and fired.cause_id == "eq-2" and fired.at == T0 + MIN
    assert "drawdown 11.0000%" in fired.reason and "max_drawdown 10.0000%" in fired.reason
    restored = out[5][0]
    assert isinstance(restored, ScaleBudgets)
    assert restored.factor == 1.0 and restored.drawdown == pytest.approx(0.04)
    assert "2340s after the scale" in restored.reason  # 39 minutes
    again = out[6][0]
    assert isinstance(again, ScaleBudgets) and again.drawdown == pytest.approx(0.12)
    assert budget_factor(CONFIG, state) == 0.5


def test_the_deepest_latched_drawdown_level_sets_the_budget_factor() -> None:
    config = PlaybookConfig(
        drawdown=(
            DrawdownRule(name="dd10", max_drawdown=0.10, reset_below=0.05, scale=0.5),
            DrawdownRule(name="dd20", max_drawdown=0.20, reset_below=0.10, scale=0.25),
        )
    )
    state, out = run([equity(1, 880, 0)], config)
    assert [a.rule for a in out[0]] == ["dd10"] and budget_factor(config, state) == 0.5
    state, out = run([equity(2, 790, 1)], config, state)
    assert [(a.rule, a.factor) for a in out[0]] == [("dd20", 0.25)]
    assert budget_factor(config, state) == 0.25


def rejection(i: int, strategy: str, minute: float, reason: str = "max_position") -> RiskRejection:
    return RiskRejection(id=f"rj-{i}", strategy=strategy, reason=reason, at=T0 + int(minute * MIN))


def test_more_than_k_rejections_in_the_window_disable_until_enabled() -> None:
    inputs: list[PlaybookInput] = [
        rejection(1, "ma_hmm", 0),
        rejection(2, "ma_hmm", 3),
        rejection(3, "breakout", 4),  # another strategy: its own count
        rejection(4, "ma_hmm", 5, "halted: daily loss"),  # excluded reason
        rejection(5, "ma_hmm", 11),  # rj-1 (minute 0) left the 10m window (1, 11]: 2 in it
        rejection(6, "ma_hmm", 11.5),  # 3: not more than 3
        rejection(7, "ma_hmm", 12),  # 4 > 3 within (2, 12]: disabled
        rejection(8, "ma_hmm", 13),  # disabled already: nothing
        EnableCommand(id="cmd-1", strategy="breakout", by="ana", reason="x", at=T0 + 14 * MIN),
        EnableCommand(
            id="cmd-2", strategy="ma_hmm", by="ana", reason="limits fixed", at=T0 + 15 * MIN
        ),
    ]
    state, out = run(inputs)
    assert [len(a) for a in out] == [0, 0, 0, 0, 0, 0, 1, 0, 0, 1]
    disabled = out[6][0]
    assert isinstance(disabled, DisableStrategy)
    assert (disabled.strategy, disabled.rejections, disabled.max_rejections) == ("ma_hmm", 4, 3)
    assert disabled.window_ns == 10 * MIN and disabled.id == "rj-7:rejections"
    assert "4 risk rejections of ma_hmm within 10m (more than 3" in disabled.reason
    assert "keel gov enable ma_hmm" in disabled.reason
    enabled = out[9][0]
    assert isinstance(enabled, EnableStrategy)
    assert (enabled.strategy, enabled.by, enabled.cause_id) == ("ma_hmm", "ana", "cmd-2")
    assert "re-enabled by ana: limits fixed" in enabled.reason
    assert disabled_strategies(state) == frozenset()
    mid, _ = run(inputs[:8])
    assert disabled_strategies(mid) == {"ma_hmm"}
    # Re-enabled with a clean slate: three new rejections do not disable again.
    state, out = run([rejection(9 + i, "ma_hmm", 16 + i) for i in range(3)], state=state)
    assert out == [(), (), ()]


def pnl(i: int, value: float, at: datetime) -> DailyPnl:
    return DailyPnl(id=f"pnl-{i}", pnl=value, at=int(at.timestamp()) * NS)


def test_daily_loss_halts_entries_until_the_next_local_midnight() -> None:
    # New York is UTC-5 in December: 2026-12-07 15:00 local = 20:00 UTC, and the day ends
    # at 2026-12-08 00:00 local = 05:00 UTC.
    end = int(datetime(2026, 12, 8, 5, tzinfo=UTC).timestamp()) * NS
    inputs = [
        pnl(1, -499.0, datetime(2026, 12, 7, 19, tzinfo=UTC)),
        pnl(2, -500.0, datetime(2026, 12, 7, 20, tzinfo=UTC)),  # at the limit: halt
        pnl(3, -800.0, datetime(2026, 12, 7, 21, tzinfo=UTC)),  # same day: once is enough
        pnl(4, -900.0, datetime(2026, 12, 8, 4, 59, tzinfo=UTC)),  # still the 7th there
        pnl(5, -600.0, datetime(2026, 12, 8, 15, tzinfo=UTC)),  # the 8th: halts again
    ]
    state, out = run(inputs)
    assert [len(a) for a in out] == [0, 1, 0, 0, 1]
    halt = out[1][0]
    assert isinstance(halt, HaltEntries)
    assert (halt.pnl, halt.max_loss, halt.day, halt.until) == (-500.0, 500.0, "2026-12-07", end)
    assert halt.timezone == "America/New_York" and halt.rule == "daily_loss"
    assert "PnL of 2026-12-07 (America/New_York) is -500" in halt.reason
    first_day, _ = run(inputs[:4])
    assert entries_halted(first_day, end - 1) and not entries_halted(first_day, end)
    nxt = out[4][0]
    assert isinstance(nxt, HaltEntries) and nxt.day == "2026-12-08"
    assert nxt.until == end + 24 * 3600 * NS
    assert entries_halted(state, nxt.until - 1) and not entries_halted(state, nxt.until)


def test_a_day_with_a_daylight_saving_change_ends_at_local_midnight() -> None:
    # 2026-03-08 is the second Sunday of March: New York goes from UTC-5 to UTC-4 at 02:00,
    # so that day starts at 05:00 UTC, ends at 2026-03-09 04:00 UTC and lasts 23 hours.
    noon = int(datetime(2026, 3, 8, 16, tzinfo=UTC).timestamp()) * NS
    day, until = local_day(noon, "America/New_York")
    assert day == "2026-03-08"
    assert until == int(datetime(2026, 3, 9, 4, tzinfo=UTC).timestamp()) * NS
    before, start = local_day(noon - 24 * 3600 * NS, "America/New_York")
    assert before == "2026-03-07" and until - start == 23 * 3600 * NS
    # A late input of a day that is already over halts nothing.
    rule = PlaybookConfig(daily_loss=(DailyLossRule(max_loss=1.0, timezone="America/New_York"),))
    _, actions = step(rule, PlaybookState(), DailyPnl(id="p", pnl=-5.0, at=noon), until + 1)
    assert actions == ()


def test_the_same_input_twice_gives_no_second_action() -> None:
    for event in (
        equity(1, 800, 0),
        pnl(1, -1000, datetime(2026, 12, 7, 20, tzinfo=UTC)),
    ):
        state, first = step(CONFIG, PlaybookState(), event, event.at)
        again, second = step(CONFIG, state, event, event.at + MIN)
        assert len(first) == 1 and second == () and again == state
    # Four copies of the same rejection count once, not four times.
    copies = [rejection(1, "s", 0)] * 4
    _, out = run(copies)
    assert out == [(), (), (), ()]


def test_remembered_ids_are_bounded() -> None:
    config = PlaybookConfig(remember=2, rejections=(RejectionRule(max_rejections=1),))
    a, b, c = (rejection(i, "s", i) for i in range(3))
    state, out = run([a, b, c], config)
    assert state.seen == ("rj-1", "rj-2") and out[1] and isinstance(out[1][0], DisableStrategy)


# Tighter rejection limits than CONFIG, so that random sequences disable and re-enable.
PROPERTY_CONFIG = PlaybookConfig(
    drawdown=CONFIG.drawdown,
    rejections=(RejectionRule(max_rejections=1, window="30m", exclude_reasons=("halted",)),),
    daily_loss=CONFIG.daily_loss,
)
minutes = st.one_of(st.integers(min_value=0, max_value=2), st.integers(min_value=0, max_value=180))
one_input = st.one_of(
    st.tuples(st.just("eq"), st.floats(min_value=700, max_value=1000), minutes),
    st.tuples(st.just("rj"), st.sampled_from(["a", "b", "halted x"]), minutes),
    st.tuples(st.just("pnl"), st.floats(min_value=-1000, max_value=200), minutes),
    st.tuples(st.just("en"), st.sampled_from(["a", "b"]), minutes),
)


def build(spec: list[tuple[str, object, int]]) -> list[PlaybookInput]:
    """Synthetic inputs at increasing times (gaps of 0 to 180 minutes)."""
    out: list[PlaybookInput] = []
    at = T0
    for i, (kind, value, gap) in enumerate(spec):
        at += gap * MIN
        if kind == "eq":
            out.append(EquityUpdate(id=f"i{i}", equity=float(value), peak=1000.0, at=at))
        elif kind == "rj":
            strategy, reason = ("a", "halted") if value == "halted x" else (str(value), "limit")
            out.append(RiskRejection(id=f"i{i}", strategy=strategy, reason=reason, at=at))
        elif kind == "pnl":
            out.append(DailyPnl(id=f"i{i}", pnl=float(value), at=at))
        else:
            out.append(EnableCommand(id=f"i{i}", strategy=str(value), by="op", reason="r", at=at))
    return out


@settings(max_examples=150, deadline=None)
@given(
    spec=st.lists(one_input, min_size=1, max_size=40),
    redeliver=st.lists(st.integers(min_value=0, max_value=39), max_size=15),
)
def test_redelivery_and_replay_give_the_same_actions(
    spec: list[tuple[str, object, int]], redeliver: list[int]
) -> None:
    inputs = build(spec)
    clean_state, clean = run(inputs, PROPERTY_CONFIG)
    # Redelivery: copies of earlier inputs (indices in `redeliver`) arrive again later on.
    noisy: list[PlaybookInput] = []
    for i, event in enumerate(inputs):
        noisy.append(event)
        noisy.extend(inputs[j] for j in redeliver if j <= i and j % 3 == i % 3)
    noisy_state, noisy_out = run(noisy, PROPERTY_CONFIG)
    assert [a for a in noisy_out if a] == [a for a in clean if a]
    assert noisy_state.drawdown == clean_state.drawdown
    assert noisy_state.rejections == clean_state.rejections
    assert noisy_state.daily_loss == clean_state.daily_loss
    # Replay: the same log gives byte-identical actions and state.
    replay_state, replay = run(inputs, PROPERTY_CONFIG)
    assert msgspec.msgpack.encode(replay) == msgspec.msgpack.encode(clean)
    assert msgspec.msgpack.encode(replay_state) == msgspec.msgpack.encode(clean_state)
    # A snapshot taken halfway and restored continues exactly like the uninterrupted run.
    half = len(inputs) // 2
    mid, first = run(inputs[:half], PROPERTY_CONFIG)
    restored = msgspec.msgpack.decode(msgspec.msgpack.encode(mid), type=PlaybookState)
    _, second = run(inputs[half:], PROPERTY_CONFIG, restored)
    assert first + second == clean


def test_every_action_encodes_as_a_tagged_event() -> None:
    _, out = run(
        [
            equity(1, 800, 0),
            *[rejection(10 + i, "s", 1) for i in range(4)],
            EnableCommand(id="c", strategy="s", by="op", reason="ok", at=T0 + 2 * MIN),
            pnl(1, -900, datetime(2026, 12, 7, 20, tzinfo=UTC)),
        ]
    )
    actions = [a for batch in out for a in batch]
    kinds = [type(a).__name__ for a in actions]
    assert kinds == ["ScaleBudgets", "DisableStrategy", "EnableStrategy", "HaltEntries"]
    Action = ScaleBudgets | DisableStrategy | EnableStrategy | HaltEntries
    assert msgspec.json.decode(msgspec.json.encode(actions), type=list[Action]) == actions
    assert all(a.reason and a.rule and a.cause_id for a in actions)


def test_config_errors_are_one_clear_line() -> None:
    with pytest.raises(ValueError, match=r"reset_below \(0.1\) must be below max_drawdown"):
        DrawdownRule(max_drawdown=0.1, reset_below=0.1)
    with pytest.raises(ValueError, match="'Mars/Olympus' is not an IANA time zone"):
        DailyLossRule(max_loss=10, timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="unique: drawdown used twice"):
        PlaybookConfig(drawdown=(DrawdownRule(), DrawdownRule(max_drawdown=0.2)))
    with pytest.raises(ValueError, match="window"):
        RejectionRule(window="0s")
    with pytest.raises(msgspec.ValidationError, match=r"< 1.0 - at `\$.drawdown\[0\].scale`"):
        msgspec.convert({"drawdown": [{"scale": 1.5}]}, PlaybookConfig)
    with pytest.raises(msgspec.ValidationError, match=r"max_loss"):
        msgspec.convert({"daily_loss": [{"timezone": "UTC"}]}, PlaybookConfig)
    with pytest.raises(
        msgspec.ValidationError, match=r"matching regex .* - at `\$.rejections\[0\].window`"
    ):
        msgspec.convert({"rejections": [{"window": "soon"}]}, PlaybookConfig)
    with pytest.raises(ValueError, match="must be finite"):
        step(CONFIG, PlaybookState(), EquityUpdate(id="e", equity=float("nan"), peak=1, at=0), 0)
