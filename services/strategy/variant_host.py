"""A strategy instance with variants: every variant sees every input, the router picks the
one whose signals reach risk, and every variant's shadow book scores every opportunity.

An opportunity is a bar of one of the instance's markets. Its cause id is
``bar:<venue>:<symbol>:<interval>:<close_time>`` (what identifies the bar, the same live,
in every replay and in every replica); ``u = blake2b(salt:cause)`` picks the variant by the
latest roster's weights (``services/governance/router.py``). The routed variant's outputs
are published, its signals under its tag as ``model_tag``; every variant's would-be signals
go to its shadow book (``shadow_book.py``), and one ``ShadowStep`` per bar says what each
book made of it. Another input (an external event, a parameter change) that makes a
variant signal is routed by ``event:<blake2b of the event's bytes>``; its signals wait in
the books for their market's next bar and it has no shadow step of its own.

The roster starts as configured; a ``ModelRoster`` on ``gov.model.<instance>`` replaces it
(it is an input on the log, so a replay routes alike), unless it names a tag the instance
has no variant for: then it is refused as a dead letter and routing stays as it was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgspec

from contracts.codec import encode
from contracts.events import Bar, Event, Signal
from contracts.model_events import ModelRoster, ModelVariant, ShadowResult, ShadowStep
from contracts.subjects import name_token, subject_for
from contracts.system_events import DeadLetter
from services.governance.router import (
    RoutingError,
    Variant,
    VariantSet,
    VariantWeight,
    normalise,
    pick,
    unit_hash,
)
from services.runtime.role import Input, Role
from services.strategy.host import strategy_role
from services.strategy.shadow_book import Book, FillRules, base_position, place, step
from strategies.registry import EventStrategy, Strategy


class MarketBooks(msgspec.Struct, array_like=True):
    """One market's shadow books, one per variant in the configured order."""

    venue: str
    symbol: str
    books: list[Book]


class VariantSnapshot(msgspec.Struct):
    tags: tuple[str, ...]
    roster: tuple[ModelVariant, ...]
    markets: list[MarketBooks]
    strategies: list[bytes]


class VariantDecider:
    """The variants of one strategy instance behind one decider (version 2: the plain
    strategy's snapshot is version 1, and an instance that gains variants must rebuild)."""

    snapshot_version = 2

    def __init__(
        self,
        instance: str,
        variants: Sequence[tuple[str, Strategy]],
        roster: tuple[ModelVariant, ...],
        max_canary: float,
        rules: FillRules,
        salt: str = "",
    ) -> None:
        self.instance = instance
        self.worker = f"strategy-{instance}"
        self.tags = tuple(tag for tag, _ in variants)
        self.strategies = tuple(strategy for _, strategy in variants)
        self.max_canary = max_canary
        self.rules = rules
        self.salt = salt or instance
        self.roster = roster
        self._weights = self._compile(roster)
        self._markets: dict[str, dict[str, MarketBooks]] = {}

    def _compile(self, roster: tuple[ModelVariant, ...]) -> tuple[VariantWeight, ...]:
        variants = tuple(Variant(v.tag, v.weight, v.canary) for v in roster)
        weights, _ = normalise(VariantSet(variants, self.salt), self.max_canary)
        return weights

    def decide(self, event: Event, now: int) -> Sequence[Event]:
        if type(event) is Bar:
            return self._on_bar(event)
        if isinstance(event, ModelRoster):
            return self._on_roster(event)
        return self._on_event(event)

    def _on_bar(self, bar: Bar) -> list[Event]:
        outputs = [strategy.on_bar(bar) for strategy in self.strategies]
        cause = f"bar:{bar.venue}:{bar.symbol}:{bar.interval}:{bar.close_time}"
        u = unit_hash(self.salt, cause)
        routed = pick(self._weights, u).tag
        books = self._books(bar.venue, bar.symbol).books
        prices = (bar.open, bar.high, bar.low, bar.close)
        results = []
        for i, (tag, outs, book) in enumerate(zip(self.tags, outputs, books, strict=True)):
            ordered = self._shadow_orders(i, outs, bar.venue, bar.symbol, book)
            s = step(book, prices, ordered, self.rules)
            results.append(ShadowResult(tag, s.position, s.step_return, s.trade_return))
        published = self._routed(routed, outputs)
        published.append(
            ShadowStep(
                ts=bar.ts,
                strategy=self.instance,
                venue=bar.venue,
                symbol=bar.symbol,
                cause_id=cause,
                routed=routed,
                u=u,
                results=tuple(results),
            )
        )
        return published

    def _on_event(self, event: Event) -> list[Event]:
        outputs = [
            strategy.on_event(event) if isinstance(strategy, EventStrategy) else ()
            for strategy in self.strategies
        ]
        if not any(outputs):
            return []
        cause = f"event:{hashlib.blake2b(encode(event), digest_size=16).hexdigest()}"
        for i, outs in enumerate(outputs):
            self._shadow_orders(i, outs, None, None, None)
        return self._routed(pick(self._weights, unit_hash(self.salt, cause)).tag, outputs)

    def _routed(self, tag: str, outputs: list[Sequence[Event]]) -> list[Event]:
        """The routed variant's outputs, its signals under its tag."""
        return [
            msgspec.structs.replace(e, model_tag=tag) if type(e) is Signal else e
            for e in outputs[self.tags.index(tag)]
        ]

    def _shadow_orders(
        self,
        index: int,
        outs: Sequence[Event],
        venue: str | None,
        symbol: str | None,
        book: Book | None,
    ) -> float | None:
        """A variant's signals as shadow orders: the target it decided for the bar's market
        (None: no signal there); a signal for another market waits in that market's book."""
        ordered: float | None = None
        for e in outs:
            if type(e) is not Signal:
                continue
            if book is not None and e.venue == venue and e.symbol == symbol:
                ordered = _target(e, base_position(book) if ordered is None else ordered)
            else:
                other = self._books(e.venue, e.symbol).books[index]
                place(other, _target(e, base_position(other)), self.rules)
        return ordered

    def _books(self, venue: str, symbol: str) -> MarketBooks:
        by_symbol = self._markets.setdefault(venue, {})
        market = by_symbol.get(symbol)
        if market is None:
            market = by_symbol[symbol] = MarketBooks(venue, symbol, [Book() for _ in self.tags])
        return market

    def _on_roster(self, roster: ModelRoster) -> list[Event]:
        unknown = [v.tag for v in roster.variants if v.tag not in self.tags]
        try:
            if unknown:
                raise RoutingError(
                    f"names {', '.join(unknown)}, not a variant of this instance "
                    f"(variants: {', '.join(self.tags)})"
                )
            weights = self._compile(roster.variants)
        except RoutingError as exc:
            return [
                DeadLetter(
                    ts=roster.ts,
                    worker=self.worker,
                    subject=subject_for(roster),
                    reason=f"model roster refused, routing unchanged: {exc}",
                    payload=encode(roster),
                )
            ]
        self.roster, self._weights = roster.variants, weights
        return []

    def snapshot(self) -> bytes:
        markets = [m for by_symbol in self._markets.values() for m in by_symbol.values()]
        strategies = [s.snapshot() for s in self.strategies]
        return msgspec.msgpack.encode(VariantSnapshot(self.tags, self.roster, markets, strategies))

    def restore(self, data: bytes) -> None:
        """Strict: a snapshot of other variants raises, and nothing changes."""
        snap = msgspec.msgpack.decode(data, type=VariantSnapshot)
        if snap.tags != self.tags:
            raise ValueError(
                f"the snapshot holds variants {', '.join(snap.tags)}, the config "
                f"{', '.join(self.tags)}"
            )
        weights = self._compile(snap.roster)
        for strategy, state in zip(self.strategies, snap.strategies, strict=True):
            strategy.restore(state)
        self.roster, self._weights = snap.roster, weights
        self._markets = {}
        for market in snap.markets:
            self._markets.setdefault(market.venue, {})[market.symbol] = market


def _target(signal: Signal, base: float) -> float:
    """The position a signal asks for: its target, or the base moved by its side and size."""
    if signal.target_position is not None:
        return signal.target_position
    size = signal.size or 0.0
    return base + size if signal.side == "buy" else base - size


def roster_filter(instance: str) -> str:
    """The rosters addressed to one strategy instance."""
    return f"gov.model.{name_token(instance, 'strategy')}"


def variant_role(
    instance: str,
    variants: Sequence[tuple[str, Strategy]],
    roster: tuple[ModelVariant, ...],
    max_canary: float,
    rules: FillRules,
    symbols: Sequence[str],
) -> Role:
    """The role of an instance with variants: the plain role's inputs (the variants are one
    strategy with other params, so they want the same events) plus its rosters."""
    decider = VariantDecider(instance, variants, roster, max_canary, rules)
    plain = strategy_role(variants[0][1], symbols).inputs
    governance = tuple(i.subjects for i in plain if i.stream == "GOVERNANCE")
    inputs = tuple(i for i in plain if i.stream != "GOVERNANCE")
    subjects = (*(s for group in governance for s in group), roster_filter(instance))
    return Role(f"strategy-{instance}", (*inputs, Input("GOVERNANCE", subjects)), decider)
