"""Issue 13, defects 2 and 9: one invalid value for every field of every event type.

Every field of every type in ``AnyEvent`` gets values of the wrong type (from its type as
``msgspec.inspect`` gives it) and, where the event's invariants forbid some values of the
right type, those too (``tests/malformed.py``); hypothesis puts either into any valid
instance. Each, as the JSON a publisher would send, is
refused at decode with a reason; a name that is legal for the type but cannot form the
subject it travels on is refused by the subject's admission. Then all of them go through a
real nats-server to the default fleet's workers: each yields exactly one dead letter per
consuming worker with the reason, nothing else, and the workers carry on.
"""

from __future__ import annotations

from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.admission import admission_error
from contracts.codec import DecodeError, decode, encode
from contracts.events import (
    EVENT_TYPES,
    Bar,
    EquitySnapshot,
    Event,
    ExecutionReport,
    FundingRate,
    Instrument,
    ListingAnnouncement,
    OrderCommand,
    PositionChanged,
    PromoAnnouncement,
    Quote,
    Signal,
    SocialSentiment,
    StrategyPnL,
    Trade,
)
from contracts.governance_events import PlaybookAction
from contracts.model_events import AllocationDecided, ModelRoster, PromotionDecided
from contracts.notify_events import Notification
from contracts.subjects import subject_for
from contracts.system_events import DeadLetter, GovernanceCommand, Heartbeat
from contracts.venue_events import KillSwitch
from eventstore.server import EmbeddedServer
from services.config import KeelConfig
from services.fleet import fleet_roles
from services.portfolio.config import PortfolioConfig
from tests.fuzz_harness import InProcessFleet, input_patterns, run_batches
from tests.malformed import (
    IMPOSSIBLE,
    SAMPLES,
    FieldCase,
    Malformed,
    all_field_cases,
    field_cases,
    home_type,
    refusal,
    unfit_names,
)
from tests.test_contracts import STRATEGIES

CASES = all_field_cases()


def test_every_field_of_every_event_type_has_invalid_values() -> None:
    assert set(SAMPLES) == set(EVENT_TYPES)
    for event_type in EVENT_TYPES:
        covered = {case.field for case in field_cases(event_type)}
        assert covered == set(event_type.__struct_fields__), event_type.__name__
    for event_type, fields in IMPOSSIBLE.items():
        assert set(fields) <= set(event_type.__struct_fields__), event_type.__name__


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
def test_each_invalid_value_is_refused_at_decode_with_a_reason(event_type: type[Event]) -> None:
    assert decode(encode(SAMPLES[event_type])) == SAMPLES[event_type]
    accepted = []
    for case in field_cases(event_type):
        try:
            decode(case.data)
        except DecodeError as exc:
            assert str(exc).strip(), case
        else:
            accepted.append(f"{case.field}={case.value} ({case.why})")
    assert accepted == []


@pytest.mark.parametrize("event_type", list(IMPOSSIBLE), ids=lambda t: t.__name__)
def test_the_constructor_refuses_the_impossible_values_too(event_type: type[Event]) -> None:
    """An invariant holds for events a worker builds, not only for those it reads."""
    for field, values in IMPOSSIBLE[event_type].items():
        for value in values:
            with pytest.raises(ValueError) as info:
                msgspec.structs.replace(SAMPLES[event_type], **{field: value})
            assert str(info.value).strip(), (field, value)


def _wrong_values(info: mi.Type) -> list[Any]:
    match info:
        case mi.StrType():
            return [1, [], {}]
        case mi.IntType():
            return ["7", 0.5, msgspec.Raw(b"1e400"), 2**64]
        case mi.FloatType():
            return ["1", msgspec.Raw(b"1e999"), msgspec.Raw(b"-1e999"), [], False]
        case mi.BoolType():
            return ["false", 0, None]
        case mi.BytesType():
            return [3, "%%%"]
        case mi.LiteralType():
            return ["nope", 0]
        case mi.UnionType():
            wrong = [v for t in info.types for v in _wrong_values(t)]
            return [v for v in wrong if v is not None]
    return []


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(EVENT_TYPES).flatmap(lambda t: STRATEGIES[t]), st.data())
def test_any_valid_event_with_one_field_of_a_wrong_type_is_refused(
    event: Event, data: st.DataObject
) -> None:
    info = mi.type_info(type(event))
    assert isinstance(info, mi.StructType)
    field = data.draw(st.sampled_from([f for f in info.fields if _wrong_values(f.type)]))
    value = data.draw(st.sampled_from(_wrong_values(field.type)))
    raw = msgspec.to_builtins(event)
    raw[field.name] = value
    with pytest.raises(DecodeError) as refused:
        decode(msgspec.json.encode(raw))
    assert str(refused.value).strip()


_NEG = st.floats(max_value=-1e-300, allow_nan=False, allow_infinity=False)
_NOT_POS = st.floats(max_value=0.0, allow_nan=False, allow_infinity=False)
_NEG_INT = st.integers(min_value=-(2**63), max_value=-1)
_NOT_POS_INT = st.integers(min_value=-(2**63), max_value=0)
_OUTSIDE_UNIT = st.floats(min_value=1.000001, max_value=1e300) | _NEG
_SIGN_RULES: dict[type[Event], dict[str, st.SearchStrategy[Any]]] = {
    Instrument: {
        "tick_size": _NEG,
        "lot_size": _NEG,
        "min_notional": _NEG,
        "max_leverage": _NEG,
        "contract_size": _NOT_POS,
    },
    Bar: {"open": _NOT_POS, "high": _NOT_POS, "low": _NOT_POS, "close": _NOT_POS, "volume": _NEG},
    Trade: {"price": _NOT_POS, "qty": _NOT_POS},
    Quote: {"bid": _NOT_POS, "bid_size": _NEG, "ask_size": _NEG},
    FundingRate: {"interval_h": _NOT_POS, "next_time": _NEG_INT},
    Signal: {"confidence": _OUTSIDE_UNIT, "size": _NOT_POS, "atr": _NEG},
    OrderCommand: {
        "qty": _NOT_POS,
        "limit_price": _NOT_POS,
        "stop_price": _NOT_POS,
        "take_profit": _NOT_POS,
        "stop_loss": _NOT_POS,
        "trail_pct": _NOT_POS | st.floats(min_value=100.0, max_value=1e300),
        "trail_atr": _NOT_POS,
        "atr": _NOT_POS,
        "expire_at": _NOT_POS_INT,
    },
    ExecutionReport: {
        "order_qty": _NEG,
        "fill_price": _NEG,
        "fill_qty": _NEG,
        "cum_qty": _NEG,
        "stop_price": _NOT_POS,
        "limit_price": _NOT_POS,
    },
    PositionChanged: {"avg_price": _NEG, "margin_used": _NEG},
    EquitySnapshot: {"gross_exposure": _NEG, "margin_used": _NEG},
    StrategyPnL: {"gross_exposure": _NEG, "positions": _NEG_INT},
    Heartbeat: {
        "seq": _NEG_INT,
        "processed": _NEG_INT,
        "metrics_port": _NEG_INT | st.integers(min_value=65_536, max_value=2**63 - 1),
    },
    DeadLetter: {"stream_seq": _NEG_INT},
    ListingAnnouncement: {"listing_time": _NEG_INT},
    SocialSentiment: {
        "score": st.floats(min_value=1.000001, max_value=1e300),
        "mentions": _NEG_INT,
    },
    PromoAnnouncement: {
        "starts_at": _NEG_INT,
        "ends_at": _NEG_INT,
        "min_volume": _NOT_POS,
        "reward_pool": _NOT_POS,
        "reward_per_user": _NOT_POS,
        "winners": _NOT_POS_INT,
    },
}
"""Fields whose sign or range the type fixes, and values outside it, whatever the rest."""


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(list(_SIGN_RULES)), st.data())
def test_any_valid_event_with_one_value_out_of_its_range_is_refused(
    event_type: type[Event], data: st.DataObject
) -> None:
    event = data.draw(STRATEGIES[event_type])
    field = data.draw(st.sampled_from(sorted(_SIGN_RULES[event_type])))
    value = data.draw(_SIGN_RULES[event_type][field])
    raw = msgspec.to_builtins(event)
    raw[field] = value
    with pytest.raises(DecodeError) as refused:
        decode(msgspec.json.encode(raw))
    assert str(refused.value).strip()


def test_names_that_cannot_form_their_subject_are_refused_by_its_admission() -> None:
    unfit = unfit_names()
    # every type but those whose subject carries no name: pf.equity, gov.cmd.<action>,
    # sys.notify.<outcome>, venue.kill; and gov.playbook.<rule>, whose rule is checked as a
    # token when built
    nameless = {EquitySnapshot, GovernanceCommand, KillSwitch, PlaybookAction, Notification}
    nameless |= {ModelRoster, PromotionDecided, AllocationDecided}  # a name is checked on decode
    assert {type(e) for e, _, _ in unfit} == set(EVENT_TYPES) - nameless
    for event, subject, field in unfit:
        assert decode(encode(event)) == event  # legal for the type ...
        reason = admission_error(subject, event)  # ... but not on its subject
        assert reason and f"payload {field}" in reason, (subject, field, reason)


def test_a_fill_whose_strategy_cannot_name_a_subject_is_refused() -> None:
    """It used to be booked, and the portfolio's attribution (``pf.pnl.<strategy>``) then
    failed on every later bar: a poison pill for the book's valuation."""
    sample = SAMPLES[ExecutionReport]
    raw = msgspec.to_builtins(sample) | {"strategy": "evil strat"}
    with pytest.raises(DecodeError, match="strategy must match"):
        decode(msgspec.json.encode(raw))


# --- through the real workers ---------------------------------------------------------------


def _messages(cases: list[FieldCase]) -> list[tuple[str, str, list[Malformed], int]]:
    """Each case on its own type's input subject when a worker consumes that type, else on
    the input subjects in turn; then the names that cannot form their subjects."""
    roles = fleet_roles(KeelConfig())
    patterns = input_patterns(roles)
    homes = {home_type(p): (s, p) for s, p in patterns}
    batches: dict[tuple[str, str], list[Malformed]] = {sp: [] for sp in patterns}
    subjects = {p: subject_for(SAMPLES[home_type(p)]) for _, p in patterns}
    items = [(c.event_type, c.data, f"{c.field}={c.value}") for c in cases]
    items += [(type(e).__name__, encode(e), f"unfit {field}") for e, _, field in unfit_names()]
    by_name = {t.__name__: t for t in EVENT_TYPES}
    for i, (type_name, data, what) in enumerate(items):
        stream, pattern = homes.get(by_name[type_name], patterns[i % len(patterns)])
        subject = subjects[pattern]
        headers = {"Nats-Msg-Id": f"field-{i}"}
        reason = refusal(subject, headers, data)
        assert reason, (type_name, what)
        batches[(stream, pattern)].append(Malformed(subject, data, headers, type_name, reason))
    return [(s, p, batch, 0) for (s, p), batch in batches.items()]


async def test_every_invalid_field_becomes_one_dead_letter_in_the_fleet(
    nats_server: EmbeddedServer,
) -> None:
    """Attribution on every bar: a fill booked under a name that cannot form a subject
    would make the portfolio dead-letter the bars that follow (``alive_after``)."""
    batches = _messages(CASES)
    sent = sum(len(b) for _, _, b, _ in batches)
    assert sent == len(CASES) + len(unfit_names())
    config = KeelConfig(portfolio=PortfolioConfig(attribution_every=1))
    report = await run_batches(nats_server.url, InProcessFleet(config), batches, mode="fields")
    assert report.sent == sent
    assert report.crashed == [] and report.restarted == []
    assert report.not_dead_lettered == 0
    assert report.letters == report.expected_letters
    assert report.other_outputs == {} and report.stray_letters == 0
    assert report.alive_after
    assert report.clean
