"""The stale-signal rail: an entry from a signal computed on a bar older than the market's
latest bar (beyond ``max_signal_lag``) is refused, naming both times; exits pass. The same
decisions from a risk worker on a real nats-server when a newer bar is stored before the
signal, and from a rebuild of that worker folding the log; in-process replays, where each
signal follows its bar, never trip it."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from contracts.envelope import Envelope, bar_envelope
from contracts.events import Event, OrderCommand, RiskDecision, Signal
from eventstore.errors import KeelError
from eventstore.lag import wait_drained
from eventstore.server import EmbeddedServer
from replay.engine import ReplayEngine
from services.config import load_config
from services.fleet import fleet_roles
from services.marketdata.synthetic import SyntheticMarket
from services.risk.engine import RiskEngine
from services.risk.limits import BreakerConfig, RiskLimits
from services.risk.role import risk_role
from services.runtime.worker import Worker, WorkerOptions
from tests.factories import MINUTE, VENUE, report
from tests.risk_helpers import ETH, T0, bar, order_of, rejection, sig
from tests.test_worker_runtime import QUIET, consumers, running, stored

LATER = T0 + 2 * MINUTE
REBUILD = WorkerOptions(metrics_port=None, heartbeat_s=0.5, rebuild=True)


def engine(**limits: object) -> RiskEngine:
    return RiskEngine(RiskLimits(**limits))  # type: ignore[arg-type]


def with_bars(e: RiskEngine, *times: int) -> RiskEngine:
    for ts in times:
        e.decide(bar(100.0, ts=ts), ts)
    return e


@pytest.mark.parametrize(
    "limits",
    [{}, {"breaker": BreakerConfig()}],
    ids=["plain bars", "bars through the handler"],
)
def test_an_entry_from_a_signal_on_an_outdated_bar_is_refused(limits: dict) -> None:
    e = with_bars(engine(**limits), T0, LATER)
    decision = rejection(e.decide(sig(1.0, ts=T0), LATER), "stale_signal")
    assert decision.reason == (
        "signal on the BTC/USDT bar of 2023-11-15T00:00:00Z: a bar of 2023-11-15T00:02:00Z "
        "was seen, 120s later (max_signal_lag 0s)"
    )
    rejection(e.decide(sig(-1.0, ts=T0 + MINUTE), LATER), "stale_signal")  # a short grows too
    order = order_of(e.decide(sig(1.0, ts=LATER), LATER))  # on the latest bar: passes
    assert (order.side, order.qty) == ("buy", 1.0)


def test_exits_and_reductions_from_an_outdated_signal_pass() -> None:
    e = with_bars(engine(), T0)
    order = order_of(e.decide(sig(3.0, ts=T0), T0))
    e.decide(report(order, "filled", 3.0, 100.0), T0 + 1)
    with_bars(e, LATER)
    reduce = order_of(e.decide(sig(1.0, ts=T0), LATER))
    assert (reduce.side, reduce.qty) == ("sell", 2.0)
    e.decide(report(reduce, "filled", 2.0, 100.0), LATER + 1)
    rejection(e.decide(sig(2.0, ts=T0), LATER), "stale_signal")  # back up: an entry
    flat = order_of(e.decide(sig(0.0, ts=T0), LATER))
    assert (flat.side, flat.qty) == ("sell", 1.0)


def test_max_signal_lag_tolerates_that_much() -> None:
    e = with_bars(engine(max_signal_lag="1m"), T0, T0 + MINUTE)
    order_of(e.decide(sig(1.0, ts=T0), T0 + MINUTE))  # exactly 1m older: passes
    with_bars(e, LATER)
    decision = rejection(e.decide(sig(2.0, ts=T0), LATER), "stale_signal")
    assert decision.reason.endswith("was seen, 120s later (max_signal_lag 1m)")


def test_the_latest_bar_is_per_market_and_never_goes_back() -> None:
    e = with_bars(engine(), T0)
    e.decide(bar(10.0, symbol=ETH, ts=LATER), LATER)  # another market's newer bar
    order_of(e.decide(sig(1.0, ts=T0), LATER))
    e.decide(bar(100.0, ts=LATER, interval="1m"), LATER)
    e.decide(bar(100.0, ts=T0 + MINUTE, interval="1h"), LATER)  # an older close, late
    rejection(e.decide(sig(2.0, ts=T0 + MINUTE), LATER), "stale_signal")
    order_of(e.decide(sig(2.0, ts=LATER), LATER))


def test_a_signal_before_any_bar_of_its_market_is_not_judged() -> None:
    order_of(engine().decide(sig(1.0, ts=T0), T0))


def test_the_latest_bars_survive_a_snapshot() -> None:
    e = with_bars(engine(), T0, LATER)
    restored = engine()
    restored.restore(e.snapshot())
    assert restored.state.bar_times == e.state.bar_times
    rejection(restored.decide(sig(1.0, ts=T0), LATER), "stale_signal")


@pytest.mark.parametrize("text", ["5x", "-1s", "1 m", ""])
def test_a_bad_max_signal_lag_fails_with_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "keel.toml"
    path.write_text(f'[risk]\nmax_signal_lag = "{text}"\n')
    with pytest.raises(KeelError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and "$.risk.max_signal_lag" in message, message
    with pytest.raises(ValueError, match="max_signal_lag"):
        RiskLimits(max_signal_lag=text)


def test_max_signal_lag_loads_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "keel.toml"
    path.write_text('[risk]\nmax_signal_lag = "90s"\n')
    assert load_config(path).risk.max_signal_lag_ns == 90 * 10**9
    assert msgspec.json.decode(b"{}", type=RiskLimits).max_signal_lag == "0s"


# --- replays ------------------------------------------------------------------------------

CONFIG = """
[[strategies]]
name = "ma_cross"
instance = "ma"
params = {{ kind = "ema", fast = 3, slow = 8, mode = "long_short", qty = 1 }}

[[strategies]]
name = "mean_reversion"
instance = "mr"

[risk]
max_signal_lag = "{lag}"

[execution]
fill = "next_open"
"""


def replay(tmp_path: Path, lag: str, market: list[Event]) -> list[tuple[str, Event]]:
    path = tmp_path / f"keel-{lag}.toml"
    path.write_text(CONFIG.format(lag=lag))
    outputs: list[tuple[str, Event]] = []
    ReplayEngine(
        fleet_roles(load_config(path)),
        lambda subject, event, envelope, producer: outputs.append((producer, event)),
    ).run(market)
    return outputs


def test_an_in_process_replay_never_trips_it(tmp_path: Path) -> None:
    """Each signal's cascade runs before the next bar: the rule changes nothing, across two
    symbols whose bars interleave."""
    bars = sorted(
        SyntheticMarket(symbols=("BTC/USDT", "ETH/USDT"), bars=300, seed=5).generate(),
        key=lambda b: b.ts,
    )
    strict = replay(tmp_path, "0s", list(bars))
    assert [e for _, e in strict if isinstance(e, OrderCommand)], "the run must trade"
    assert not [e for _, e in strict if isinstance(e, RiskDecision)]
    assert strict == replay(tmp_path, "52w", list(bars))


# --- a live-like session on the bus -------------------------------------------------------


def signal(ts: int, target: float) -> tuple[Signal, Envelope]:
    event = Signal(ts=ts, strategy="ma", venue=VENUE, symbol="BTC/USDT", target_position=target)
    return event, Envelope.root(f"sig-{ts}-{target:g}", ts)


async def test_a_signal_stored_after_a_newer_bar_is_refused_live_and_in_the_rebuild(
    nats_server: EmbeddedServer,
) -> None:
    first, second = bar(100.0, ts=T0), bar(101.0, ts=T0 + MINUTE)
    live = [Worker(risk_role(RiskLimits()), QUIET)]
    async with running(nats_server.url, live) as bus:
        for item in (first, signal(T0, 1.0), second, signal(T0, 2.0), signal(T0 + MINUTE, 2.0)):
            event, envelope = item if isinstance(item, tuple) else (item, bar_envelope(item))
            await bus.publish(event, envelope)
            assert await wait_drained(bus, consumers(live), timeout=20)
        decided = await stored(bus, "ord.>", "ORDERS")
    assert [type(e).__name__ for e in decided] == ["OrderCommand", "RiskDecision", "OrderCommand"]
    assert [(o.side, o.qty) for o in decided if isinstance(o, OrderCommand)] == [
        ("buy", 1.0),
        ("buy", 1.0),
    ]
    [refused] = [d for d in decided if isinstance(d, RiskDecision)]
    assert (refused.rule, refused.ts) == ("stale_signal", T0)
    assert "bar of 2023-11-15T00:00:00Z: a bar of 2023-11-15T00:01:00Z" in refused.reason

    published: list[str] = []
    rebuilt = [Worker(risk_role(RiskLimits()), REBUILD)]
    async with running(nats_server.url, rebuilt, published):
        assert rebuilt[0].decider.snapshot() == live[0].decider.snapshot()
    assert published == []
