"""The canary router: deterministic, weight-true, canary-capped, salt-sensitive, and one
clear error for an instance without variants."""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import Counter

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore.errors import KeelError
from services.governance.router import (
    RouterConfig,
    RoutingError,
    Variant,
    VariantSet,
    normalise,
    route,
    unit_hash,
)

N = 100_000
CAUSES = [f"md.bar.BTCUSDT.1m:{i:08d}" for i in range(N)]


def _config(*variants: Variant, max_canary: float = 0.1, salt: str = "") -> RouterConfig:
    return RouterConfig(
        max_canary=max_canary, instances={"ma_hmm": VariantSet(variants=variants, salt=salt)}
    )


def _binomial_ok(count: int, n: int, p: float) -> bool:
    """Within 5 standard deviations of Binomial(n, p): sd = sqrt(n p (1 - p)); a false
    failure has probability about 6e-7 (and the ids are fixed, so it cannot flake)."""
    return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1e-9


def test_unit_hash_is_blake2b_top_53_bits_and_pinned() -> None:
    data = b"s1:md.bar.BTCUSDT.1m:00000042"
    k = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") >> 11
    assert unit_hash("s1", "md.bar.BTCUSDT.1m:00000042") == k / 2**53
    # Pinned: a change of hash would reroute every recorded session.
    assert unit_hash("", "x") == pytest.approx(0.9886558100226865, abs=0)
    assert unit_hash("ma_hmm", "e-1") == pytest.approx(0.7437030255711397, abs=0)


def test_same_cause_same_route_and_route_is_deterministic() -> None:
    config = _config(Variant("v3"), Variant("v4", weight=0.1, canary=True))
    first = [route(config, "ma_hmm", c) for c in CAUSES[:2000]]
    again = [route(config, "ma_hmm", c) for c in CAUSES[:2000]]
    assert msgspec.msgpack.encode(first) == msgspec.msgpack.encode(again)
    # The salt defaults to the instance name: another instance, another split.
    other = RouterConfig(instances={"other": config.instances["ma_hmm"]})
    assert [route(other, "other", c).u for c in CAUSES[:50]] != [r.u for r in first[:50]]


def test_closed_form_normalisation_with_the_cap() -> None:
    # current 0.8, canaries 0.15 + 0.05: configured canary share 0.2 > 0.1, so the cap
    # scales both canaries by 0.1 / 0.2: A 0.075, B 0.025, current 0.9.
    config = _config(
        Variant("cur", weight=0.8),
        Variant("B", weight=0.05, canary=True),
        Variant("A", weight=0.15, canary=True),
    )
    weights, configured = normalise(config.instances["ma_hmm"], config.max_canary)
    assert configured == pytest.approx(0.2)
    assert [(w.tag, w.canary) for w in weights] == [("A", True), ("B", True), ("cur", False)]
    assert [w.weight for w in weights] == pytest.approx([0.075, 0.025, 0.9])
    assert [b for w in weights for b in (w.low, w.high)] == pytest.approx(
        [0.0, 0.075, 0.075, 0.1, 0.1, 1.0]
    )
    r = route(config, "ma_hmm", "bar-7")
    assert "capped to max_canary 0.1" in r.reason and f"u={r.u:.6f}" in r.reason


def test_under_the_cap_weights_are_proportional() -> None:
    # 9 : 0.5 : 0.5 -> 0.9, 0.05, 0.05 (share 0.1 is exactly the cap).
    config = _config(Variant("cur", weight=9), Variant("a", 0.5, True), Variant("b", 0.5, True))
    weights, configured = normalise(config.instances["ma_hmm"], 0.1)
    assert configured == pytest.approx(0.1)
    assert [w.weight for w in weights] == pytest.approx([0.05, 0.05, 0.9])


def test_empirical_shares_match_the_weights_over_100k_causes() -> None:
    config = _config(
        Variant("v3", weight=0.8),
        Variant("v4", weight=0.15, canary=True),
        Variant("v5", weight=0.05, canary=True),
    )
    counts = Counter(route(config, "ma_hmm", c).tag for c in CAUSES)
    expected = {"v3": 0.9, "v4": 0.075, "v5": 0.025}
    assert set(counts) == set(expected)
    for tag, p in expected.items():
        assert _binomial_ok(counts[tag], N, p), (tag, counts[tag], N * p)


def test_a_new_salt_reshuffles() -> None:
    # Independent splits agree with probability p^2 + (1 - p)^2 = 0.5 for a 50/50 split;
    # the same salt agrees always.
    variants = (Variant("cur", 1.0), Variant("can", 1.0, True))
    one = _config(*variants, max_canary=0.5, salt="2026-12-01")
    two = _config(*variants, max_canary=0.5, salt="2026-12-07")
    a = [route(one, "ma_hmm", c).tag for c in CAUSES]
    b = [route(two, "ma_hmm", c).tag for c in CAUSES]
    same = sum(x == y for x, y in zip(a, b, strict=True))
    assert _binomial_ok(same, N, 0.5)
    assert _binomial_ok(a.count("can"), N, 0.5) and _binomial_ok(b.count("can"), N, 0.5)


variant_weights = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    current=variant_weights,
    canaries=st.lists(variant_weights, min_size=0, max_size=6),
    max_canary=st.floats(min_value=0, max_value=1),
    cause=st.text(max_size=40),
)
def test_max_canary_holds_whatever_the_weights(
    current: float, canaries: list[float], max_canary: float, cause: str
) -> None:
    config = _config(
        Variant("cur", current),
        *(Variant(f"c{i}", w, True) for i, w in enumerate(canaries)),
        max_canary=max_canary,
    )
    weights, _ = normalise(config.instances["ma_hmm"], max_canary)
    assert all(w.weight >= 0 for w in weights)
    assert math.fsum(w.weight for w in weights) == pytest.approx(1.0, abs=1e-12)
    assert math.fsum(w.weight for w in weights if w.canary) <= max_canary + 1e-12
    # The slices tile [0, 1) in order, and the chosen variant's slice holds u.
    assert weights[0].low == 0.0 and weights[-1].high == 1.0
    assert all(a.high == b.low for a, b in itertools.pairwise(weights))
    r = route(config, "ma_hmm", cause)
    chosen = next(w for w in r.weights if w.tag == r.tag)
    assert chosen.low <= r.u < chosen.high and chosen.weight > 0


@settings(max_examples=50, deadline=None)
@given(low=st.floats(min_value=0, max_value=0.5), high=st.floats(min_value=0.5, max_value=1))
def test_raising_the_single_canary_share_only_adds_canary_opportunities(
    low: float, high: float
) -> None:
    variants = (Variant("cur", 1.0), Variant("can", 1.0, True))
    small, big = _config(*variants, max_canary=low), _config(*variants, max_canary=high)
    for c in CAUSES[:300]:
        if route(small, "ma_hmm", c).canary:
            assert route(big, "ma_hmm", c).canary


def test_no_canary_weight_routes_everything_to_the_current_model() -> None:
    config = _config(Variant("cur", 0.0), Variant("can", 0.0, True))
    assert {route(config, "ma_hmm", c).tag for c in CAUSES[:500]} == {"cur"}
    full = _config(Variant("cur", 0.0), Variant("can", 1.0, True), max_canary=1.0)
    assert {route(full, "ma_hmm", c).tag for c in CAUSES[:500]} == {"can"}


def test_unknown_instance_is_one_clear_error() -> None:
    config = _config(Variant("cur"))
    with pytest.raises(KeelError) as err:
        route(config, "nope", "bar-1")
    assert str(err.value) == (
        "no variants configured for strategy instance 'nope' (configured: ma_hmm)"
    )
    with pytest.raises(RoutingError, match=r"configured: none"):
        route(RouterConfig(), "ma_hmm", "bar-1")


def test_empty_or_headless_variant_sets_are_one_clear_error() -> None:
    with pytest.raises(RoutingError, match="at least one variant"):
        VariantSet(variants=())
    with pytest.raises(RoutingError, match=r"exactly one current model .* got 0: none"):
        VariantSet(variants=(Variant("a", 1, True),))
    with pytest.raises(RoutingError, match="got 2: a, b"):
        VariantSet(variants=(Variant("a"), Variant("b")))
    with pytest.raises(RoutingError, match="unique"):
        VariantSet(variants=(Variant("a"), Variant("a", 1, True)))
    with pytest.raises(RoutingError, match="finite"):
        VariantSet(variants=(Variant("a", math.inf),))


def test_config_constraints_name_the_path() -> None:
    raw = {"max_canary": 0.1, "instances": {"ma_hmm": {"variants": []}}}
    with pytest.raises(
        msgspec.ValidationError, match=r"length >= 1 - at `\$.instances\[...\].variants`"
    ):
        msgspec.convert(raw, RouterConfig)
    with pytest.raises(msgspec.ValidationError, match=r"<= 1.0 - at `\$.max_canary`"):
        msgspec.convert({"max_canary": 1.5}, RouterConfig)
    bad_weight = {"instances": {"s": {"variants": [{"tag": "v", "weight": -1}]}}}
    with pytest.raises(
        msgspec.ValidationError, match=r">= 0.0 - at `\$.instances\[...\].variants\[0\].weight`"
    ):
        msgspec.convert(bad_weight, RouterConfig)
    headless = {"instances": {"s": {"variants": [{"tag": "v", "canary": True}]}}}
    with pytest.raises(
        msgspec.ValidationError, match=r"exactly one current model.*\$.instances\[...\]"
    ):
        msgspec.convert(headless, RouterConfig)
    ok = msgspec.convert(
        {
            "instances": {
                "s": {"variants": [{"tag": "v3"}, {"tag": "v4", "weight": 0.1, "canary": True}]}
            }
        },
        RouterConfig,
    )
    assert ok.max_canary == 0.1 and ok.instances["s"].variants[1].canary
