"""Per-worker OpenTelemetry metrics: Prometheus ``/metrics`` on the worker's own port, and
OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (docs/observability.md lists every metric).

Label sets are bounded by construction: workers, streams, subject kinds (``md.bar``,
``sig``, ``ord.cmd``... never a whole subject), event types, strategies, model tags, risk
rules, order sides and statuses, and for positions the configured venue and symbol
universe. Nothing is ever labelled with an order id, event id or price.

Trading metrics are observed on what a worker *publishes* (each event type has one
producer: the strategy publishes signals, risk orders and rejections, execution reports,
portfolio positions and equity, governance rosters, promotions and budgets), counted once
per stored event: a re-publish the log de-duplicates after a restart does not count twice.
The leaderboard figures (``keel.leaderboard.*``) fold the execution reports this worker
published since it started through ``services/governance/leaderboard.py``, the code behind
``keel gov leaderboard``.
"""

from __future__ import annotations

import atexit
import functools
import time
from collections.abc import Callable, Iterable
from typing import get_args

from opentelemetry.metrics import Histogram

from contracts.events import (
    EquitySnapshot,
    Event,
    ExecutionReport,
    FeedState,
    FeedStatus,
    OrderCommand,
    PositionChanged,
    RiskDecision,
    Signal,
)
from contracts.model_events import AllocationDecided, ModelRoster, PromotionDecided
from contracts.system_events import GovernanceCommand, SystemState, SystemStatus
from services.governance.leaderboard import ClosedTrade, Standings
from services.runtime.metrics_export import (
    DictCounter,
    DictGauge,
    MetricsEndpoint,
    otlp_enabled,
)

SYSTEM_STATES: tuple[str, ...] = get_args(SystemState)
FEED_STATES: tuple[str, ...] = get_args(FeedState)

HANDLER_BUCKETS = (
    *(1e-6 * m for m in (5, 10, 25, 50, 100, 250, 500)),
    *(1e-3 * m for m in (1, 2.5, 5, 10, 25, 50, 100, 250, 500)),
    1.0,
)
"""Seconds: a decision takes microseconds, a slow one milliseconds."""

LATENCY_BUCKETS = (
    *(1e-3 * m for m in (0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500)),
    *(1.0 * m for m in (1, 2.5, 5, 10, 30, 60, 120, 300)),
)
"""Seconds: hops through the log take milliseconds; a worker catching up takes minutes."""

SUBJECT_KINDS = frozenset(
    {
        "md.bar",
        "md.trade",
        "md.quote",
        "md.instrument",
        "sig",
        "ord.cmd",
        "ord.risk",
        "exec.report",
        "pf.position",
        "pf.equity",
        "gov.cmd",
        "gov.tune",
        "gov.playbook",
        "gov.shadow",
        "gov.model",
        "gov.promotion",
        "gov.alloc",
        "ext.listing",
        "ext.sentiment",
        "ext.promo",
        "sys.heartbeat",
        "sys.dlq",
        "sys.status",
    }
)
"""The kinds of subject Keel builds (``contracts/subjects.py``); anything else is ``other``."""


@functools.lru_cache(maxsize=4096)
def subject_kind(subject: str) -> str:
    """The bounded part of a subject: ``md.bar.sim.BTC-USDT.1m`` -> ``md.bar``,
    ``sig.ma_cross.sim.BTC-USDT`` -> ``sig``; unknown subjects -> ``other``."""
    tokens = subject.split(".", 2)
    if tokens[0] == "sig":
        return "sig"
    kind = ".".join(tokens[:2])
    return kind if kind in SUBJECT_KINDS else "other"


class WorkerMetrics:
    """Every instrument of one worker; the worker loop calls the hooks below.

    Counters and gauges are dict-backed observable instruments (cheap per event); the three
    histograms are the SDK's synchronous ones, recorded once per input or output."""

    def __init__(
        self,
        worker: str,
        port: int | None,
        addr: str = "127.0.0.1",
        streams: Iterable[str] = (),
    ) -> None:
        self.worker = worker
        self._endpoint = MetricsEndpoint(worker, port, addr)
        self.port = self._endpoint.port
        meter = self._endpoint.meter
        mine = {"worker": worker}
        self._attrs: dict[tuple[str, ...], dict[str, str]] = {}

        def total(name: str, unit: str, description: str, *labels: str, fixed=mine) -> DictCounter:
            return DictCounter(meter, name, unit, description, labels, fixed)

        def gauge(name: str, unit: str, description: str, *labels: str, fixed=mine) -> DictGauge:
            return DictGauge(meter, name, unit, description, labels, fixed)

        def histogram(name: str, description: str, buckets: tuple[float, ...]) -> Histogram:
            return meter.create_histogram(
                name, unit="s", description=description, explicit_bucket_boundaries_advisory=buckets
            )

        # the runtime: what goes in and out, how long it takes, what is waiting
        self.events_in = total(
            "keel.events.in",
            "{event}",
            "events consumed and handled",
            *("stream", "subject_kind", "event_type"),
        )
        self.events_out = total(
            "keel.events.out",
            "{event}",
            "events published and stored",
            *("subject_kind", "event_type"),
        )
        self.duplicates = total(
            "keel.publish.duplicates",
            "{event}",
            "re-published events the log already held (de-duplicated)",
        )
        self.dead_letters = total(
            "keel.dead_letters", "{message}", "messages dead-lettered", "stream", "reason"
        )
        self.handler_seconds = histogram(
            "keel.handler.duration", "decode and decide time of one event", HANDLER_BUCKETS
        )
        self.consume_delay = histogram(
            "keel.consume.delay",
            "time from an input being stored in the log to this worker handling it",
            LATENCY_BUCKETS,
        )
        self.pipeline_latency = histogram(
            "keel.pipeline.latency",
            "time from the root cause (bar, command) being stored in the log to this output "
            "being stored",
            LATENCY_BUCKETS,
        )
        self.pending = gauge(
            "keel.consumer.pending.messages",
            "{message}",
            "messages stored for a durable consumer and not yet delivered",
            "stream",
        )
        self.ack_pending = gauge(
            "keel.consumer.ack_pending.messages",
            "{message}",
            "messages delivered to a durable consumer and not yet acknowledged",
            "stream",
        )
        self.start_time = gauge("keel.worker.start_time", "s", "when this worker process started")
        self.kill_switch = gauge(
            "keel.kill_switch.engaged", "1", "1 while the governance kill switch is engaged"
        )
        self.feed_state = gauge(
            "keel.feed.state",
            "1",
            "1 for the current state of a market's live feed (FeedStatus), 0 for the others",
            *("venue", "symbol", "state"),
        )

        # trading: observed on what this worker publishes
        self.signals = total(
            "keel.signals", "{signal}", "signals published", "strategy", "model_tag", fixed={}
        )
        self.orders = total(
            "keel.orders",
            "{order}",
            "orders approved by risk",
            *("strategy", "model_tag", "side"),
            fixed={},
        )
        self.rejections = total(
            "keel.risk.rejections",
            "{order}",
            "signals rejected by a risk rule",
            *("strategy", "rule"),
            fixed={},
        )
        self.reports = total(
            "keel.execution.reports",
            "{report}",
            "execution reports by status",
            *("strategy", "model_tag", "status"),
            fixed={},
        )
        self.fills = total(
            "keel.fills", "{fill}", "fills", "strategy", "model_tag", "side", fixed={}
        )
        self.notional = total(
            "keel.fills.notional",
            "{currency}",
            "filled quantity x price",
            *("strategy", "model_tag"),
            fixed={},
        )
        self.portfolio = {
            name: gauge(f"keel.portfolio.{name}", "{currency}", description, fixed={})
            for name, description in (
                ("equity", "cash plus positions at the last mark"),
                ("cash", "cash"),
                ("realized_pnl", "realized profit and loss"),
                ("unrealized_pnl", "unrealized profit and loss at the last mark"),
                ("fees", "fees paid"),
                ("gross_exposure", "sum of |position value| at the last mark"),
                ("peak_equity", "highest equity this worker observed since it started"),
            )
        }
        self.drawdown = gauge(
            "keel.portfolio.drawdown.ratio",
            "1",
            "1 - equity / peak equity (peak since this worker started)",
            fixed={},
        )
        self._peak = 0.0
        self.positions = gauge(
            "keel.position.quantity",
            "{unit}",
            "position size by strategy, venue and symbol (signed)",
            *("strategy", "venue", "symbol"),
            fixed={},
        )
        self.position_pnl = gauge(
            "keel.position.realized_pnl",
            "{currency}",
            "realized PnL of a position",
            *("strategy", "venue", "symbol"),
            fixed={},
        )
        self._position_keys: dict[tuple[str, str], tuple[str, str, str]] = {}
        self.status = gauge(
            "keel.system.status",
            "1",
            "1 for the current system status of a source, 0 for the others",
            *("source", "status"),
            fixed={},
        )
        self._status_seen = False
        self._governance(gauge, total)

        self.start_time.set((), time.time())
        self.duplicates.add((), 0)
        for stream in streams:  # known series start at 0 so rates and alerts see them
            for reason in ("undecodable", "handler_error"):
                self.dead_letters.add((stream, reason), 0)

    def _governance(
        self, gauge: Callable[..., DictGauge], total: Callable[..., DictCounter]
    ) -> None:
        """Governance's decisions and the leaderboard (docs/governance.md, "Leaderboard and
        metrics"); leaderboard series are labelled by scope (strategy, model or venue), the
        labels a scope does not group by being ``all``."""
        self.roster_weight = gauge(
            "keel.gov.roster.weight",
            "1",
            "routing weight of a model in its strategy's latest roster (relative)",
            *("strategy", "model_tag", "canary"),
            fixed={},
        )
        self.budget = gauge(
            "keel.gov.budget.weight",
            "1",
            "a model's budget (fraction of equity) from the latest allocation",
            *("strategy", "model_tag", "canary"),
            fixed={},
        )
        self.budget_total = gauge(
            "keel.gov.budget.total", "1", "a strategy's budgets summed", "strategy", fixed={}
        )
        self.promotions = total(
            "keel.gov.promotions",
            "{decision}",
            "promotion gate evaluations by decision",
            *("strategy", "canary", "decision"),
            fixed={},
        )
        self.promotion_statistic = gauge(
            "keel.gov.promotion.statistic",
            "1",
            "log of the mixture SPRT likelihood ratio at the latest evaluation",
            *("strategy", "canary"),
            fixed={},
        )
        self.promotion_threshold = gauge(
            "keel.gov.promotion.threshold",
            "1",
            "log(1/alpha): the statistic a canary must reach",
            *("strategy", "canary"),
            fixed={},
        )
        self.promotion_sharpe = gauge(
            "keel.gov.promotion.sharpe",
            "1",
            "per-trade Sharpe of each arm at the latest evaluation",
            *("strategy", "model_tag", "arm"),
            fixed={},
        )
        labels = ("scope", "strategy", "model_tag", "venue")
        self.board = {
            name: gauge(f"keel.leaderboard.{name}", unit, description, *labels, fixed={})
            for name, unit, description in (
                ("pnl", "{currency}", "net PnL of closed round trips"),
                ("trades", "{trade}", "closed round trips"),
                ("sharpe", "1", "per-trade Sharpe of closed round trips (not annualised)"),
                ("sortino", "1", "per-trade Sortino of closed round trips (not annualised)"),
                ("win_rate", "1", "share of closed round trips with a positive net PnL"),
                ("max_drawdown", "{currency}", "largest fall of cumulative net PnL"),
            )
        }
        self._standings: Standings | None = None

    def _a(self, *key: str) -> dict[str, str]:
        """Histogram attributes, built once per label combination."""
        attrs = self._attrs.get(key)
        if attrs is None:
            kind, *values = key
            attrs = self._attrs[key] = {"worker": self.worker}
            attrs.update(zip(_HISTOGRAM_LABELS[kind], values, strict=True))
        return attrs

    # --- runtime hooks -------------------------------------------------------------------

    def consumed(
        self, stream: str, subject: str, event_type: str, seconds: float, delay_s: float | None
    ) -> None:
        kind = subject_kind(subject)
        self.events_in.add((stream, kind, event_type))
        self.handler_seconds.record(seconds, self._a("in", stream, kind, event_type))
        if delay_s is not None:
            self.consume_delay.record(max(0.0, delay_s), self._a("stream", stream))

    def dead_letter(self, stream: str, reason: str) -> None:
        self.dead_letters.add((stream, reason))

    def consumer(self, stream: str, pending: int, ack_pending: int) -> None:
        self.pending.set((stream,), pending)
        self.ack_pending.set((stream,), ack_pending)

    def published(self, event: Event, subject: str, fresh: bool, latency_s: float | None) -> None:
        """An output the log acknowledged; ``fresh`` is False for a de-duplicated copy."""
        event_type = type(event).__name__
        if not fresh:
            self.duplicates.add(())
        else:
            self.events_out.add((subject_kind(subject), event_type))
            if latency_s is not None:
                self.pipeline_latency.record(max(0.0, latency_s), self._a("type", event_type))
        self._observe(event, fresh)

    def _observe(self, event: Event, fresh: bool) -> None:
        match event:
            case EquitySnapshot():
                self._equity(event)
            case PositionChanged():
                self._position(event)
            case SystemStatus():
                self.system_status(event.source, event.status)
            case ModelRoster():
                self._roster(event)
            case AllocationDecided():
                self._budgets(event)
            case _ if not fresh:
                pass
            case Signal():
                self.signals.add((event.strategy, _tag(event.model_tag)))
            case OrderCommand():
                self.orders.add((event.strategy, _tag(event.model_tag), event.side))
            case RiskDecision() if not event.approved:
                self.rejections.add((event.strategy, event.rule or "unnamed"))
            case ExecutionReport():
                tag = _tag(event.model_tag)
                self.reports.add((event.strategy, tag, event.status))
                if event.fill_qty > 0:
                    self.fills.add((event.strategy, tag, event.side))
                    self.notional.add((event.strategy, tag), abs(event.fill_qty * event.fill_price))
                    if self._standings is None:
                        self._standings = Standings()
                    trade = self._standings.fill(event)
                    if trade is not None:
                        self._leaderboard(self._standings, trade)
            case PromotionDecided():
                self._promotion(event)

    def _roster(self, roster: ModelRoster) -> None:
        """The latest roster replaces its strategy's series (a retired tag disappears)."""
        values = self.roster_weight.values
        for key in [k for k in values if k[0] == roster.strategy]:
            del values[key]
        for v in roster.variants:
            values[(roster.strategy, v.tag, "true" if v.canary else "false")] = v.weight

    def _budgets(self, event: AllocationDecided) -> None:
        values = self.budget.values
        for key in [k for k in values if k[0] == event.strategy]:
            del values[key]
        for b in event.budgets:
            values[(event.strategy, b.key.model, "true" if b.is_canary else "false")] = b.weight
        self.budget_total.set((event.strategy,), event.total)

    def _promotion(self, event: PromotionDecided) -> None:
        ev = event.evaluation
        self.promotions.add((event.strategy, event.canary, ev.decision))
        self.promotion_statistic.set((event.strategy, event.canary), ev.sequential.log_ratio)
        self.promotion_threshold.set((event.strategy, event.canary), ev.sequential.log_threshold)
        for arm, stats in (("current", ev.current), ("canary", ev.canary)):
            self.promotion_sharpe.set((event.strategy, stats.model, arm), stats.sharpe)

    def _leaderboard(self, standings: Standings, trade: ClosedTrade) -> None:
        for scope, strategy, model, venue in standings.groups(trade):
            figures = standings.figures(scope, strategy, model, venue)
            key = (
                scope,
                strategy or "all",
                _tag(model) if scope == "model" else "all",
                venue or "all",
            )
            board = self.board
            board["pnl"].set(key, figures.pnl)
            board["trades"].set(key, figures.trades)
            board["max_drawdown"].set(key, figures.max_drawdown)
            for name in ("sharpe", "sortino", "win_rate"):
                value = getattr(figures, name)
                if value is None:
                    board[name].values.pop(key, None)
                else:
                    board[name].set(key, value)

    def _equity(self, snap: EquitySnapshot) -> None:
        gauges = self.portfolio
        gauges["equity"].set((), snap.equity)
        gauges["cash"].set((), snap.cash)
        gauges["realized_pnl"].set((), snap.realized_pnl)
        gauges["unrealized_pnl"].set((), snap.unrealized_pnl)
        gauges["fees"].set((), snap.fees)
        gauges["gross_exposure"].set((), snap.gross_exposure)
        self._peak = max(self._peak, snap.equity)
        gauges["peak_equity"].set((), self._peak)
        self.drawdown.set((), 1.0 - snap.equity / self._peak if self._peak > 0 else 0.0)

    def _position(self, p: PositionChanged) -> None:
        """One series per venue and symbol (the ledger's position), labelled with the
        strategy of its last fill: a new strategy replaces the old series."""
        key = (p.strategy or "none", p.venue, p.symbol)
        old = self._position_keys.get((p.venue, p.symbol))
        if old is not None and old != key:
            self.positions.values.pop(old, None)
            self.position_pnl.values.pop(old, None)
        self._position_keys[(p.venue, p.symbol)] = key
        self.positions.set(key, p.qty)
        self.position_pnl.set(key, p.realized_pnl)

    def handled(self, event: Event) -> None:
        """An input that moves a state gauge: the governance kill switch, a feed's state (the
        stale-data alert rule reads it: infra/prometheus/alerts.yml)."""
        if isinstance(event, GovernanceCommand) and event.action in ("kill", "resume"):
            self.kill(event.action == "kill")
        elif isinstance(event, FeedStatus):
            for state in FEED_STATES:
                key = (event.venue, event.symbol, state)
                self.feed_state.set(key, 1 if state == event.state else 0)

    def kill(self, engaged: bool) -> None:
        self.kill_switch.set((), 1 if engaged else 0)
        if not self._status_seen:  # until the worker publishes its own SystemStatus
            self._set_status(self.worker, "HALTED" if engaged else "RUNNING")

    def system_status(self, source: str, status: str) -> None:
        self._status_seen = True
        self._set_status(source, status)

    def _set_status(self, source: str, status: str) -> None:
        for state in SYSTEM_STATES:
            self.status.set((source, state), 1 if state == status else 0)

    def close(self) -> None:
        self._endpoint.close()


_HISTOGRAM_LABELS: dict[str, tuple[str, ...]] = {
    "stream": ("stream",),
    "in": ("stream", "subject_kind", "event_type"),
    "type": ("event_type",),
}


def _tag(model_tag: str) -> str:
    return model_tag or "none"


def start_metrics(
    worker: str, port: int | None, addr: str = "127.0.0.1", streams: Iterable[str] = ()
) -> WorkerMetrics:
    """Serve ``/metrics``; port 0 picks a free one (announced in heartbeats)."""
    return WorkerMetrics(worker, port, addr, streams)


class ReplayMetrics:
    """Progress of ``keel backtest`` / ``keel replay`` runs in this process."""

    def __init__(self, port: int | None, addr: str) -> None:
        self._endpoint = MetricsEndpoint("replay", port, addr)
        self.port = self._endpoint.port
        meter = self._endpoint.meter
        self.bars = meter.create_counter(
            "keel.replay.bars", unit="{bar}", description="bars replayed"
        )
        self.speed = meter.create_gauge(
            "keel.replay.bars_per_second", unit="", description="bars replayed per wall second"
        )

    def counter(self, mode: str, advance: Callable[[int], None]) -> Callable[[int], None]:
        attrs = {"mode": mode}
        started = time.perf_counter()
        done = 0
        self.bars.add(0, attrs)

        def count(n: int) -> None:
            nonlocal done
            advance(n)
            done += n
            self.bars.add(n, attrs)
            self.speed.set(done / max(time.perf_counter() - started, 1e-9), attrs)

        return count

    def close(self) -> None:
        self._endpoint.close()


_replay: ReplayMetrics | None = None


def serve_replay_metrics(port: int | None, addr: str = "127.0.0.1") -> ReplayMetrics | None:
    """Start the replay metrics of this process (``--metrics-port``; None: off, unless OTLP
    is configured, which then receives them)."""
    global _replay
    if _replay is None and (port is not None or otlp_enabled("metrics")):
        _replay = ReplayMetrics(port, addr)
        atexit.register(_replay.close)  # the last OTLP push
    return _replay


def replay_progress(mode: str, advance: Callable[[int], None]) -> Callable[[int], None]:
    """Wrap a progress callback (bars replayed) so it also feeds the replay metrics."""
    if _replay is None:
        return advance
    return _replay.counter(mode.replace(" ", "_"), advance)
