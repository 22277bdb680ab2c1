"""Promo watcher: trade an exchange promotion only when its expected reward beats its cost.

A ``PromoAnnouncement`` names a venue and (to be tradable here) a ``symbol``. Its terms are
the event's parsed fields where given, else what ``parse_promo`` reads from the title and
text (see its patterns): the trading volume required, a reward pool and how many winners
share it, or a reward per qualifying user, and their currencies.

The promo is evaluated at the close of the next bar of its symbol (closing after the
announcement and within ``max_wait_s`` of it; a bar is needed to value rewards paid in the
traded coin). With V the volume required and close the bar's close:

- expected reward E (in the volume's currency):
  * reward per user and a winner count (first come): ``reward_per_user * win_prob``;
  * reward per user, no winner count: ``reward_per_user``;
  * pool and winner count (a ranking, e.g. top 100): ``pool / winners * win_prob``;
  * pool only (shared by everyone who qualifies): ``pool / expected_participants``;
- cost C = V * (``fee_bps`` + ``slippage_bps``) / 10,000: fees and expected slippage on the
  volume needed;
- rewards in the symbol's base coin (``NEW`` of ``NEW/USDT``) are valued in its quote coin
  at the close, as is a volume given in the base coin; USD stablecoins (USD, USDT, USDC, BUSD, FDUSD, TUSD, DAI) count as one currency; any
  other mismatch, a missing volume requirement or no reward found: the promo is skipped;
- E - C > ``min_edge``: one signal, long ``notional / close`` units, whose reason carries
  E, C and V; then flat at the first bar closing at or after the entry plus ``hold_s`` (or
  the promo's ``ends_at``, when earlier). Generating the volume itself (a round-trip churn
  plan) is out of scope.

Skipped: promos with no symbol, promos already over (``ends_at`` at or before the bar),
promos for a symbol that holds a promo position or has one pending, and a promo identical to
the last one acted on for its symbol (a re-sent announcement). ``State.note`` keeps the
latest evaluation per symbol.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Annotated

import msgspec
from msgspec import Meta

from contracts.envelope import content_id
from contracts.events import Bar, Event, PromoAnnouncement, Signal
from strategies.params import require_finite

NS = 1_000_000_000

_AMOUNT = (
    r"(?P<dollar>\$)?\s?(?P<num>\d[\d,]*(?:\.\d+)?)\s?"
    r"(?P<mult>[kK]\b|[mM]\b|thousand\b|million\b)?\s?(?P<ccy>(?-i:[A-Z][A-Z0-9]{1,9})\b)?"
)
_GAP = r"(?:(?!pool|prize|reward|share)[^.;\n\d]){0,40}?"
_VOLUME = [
    re.compile(
        r"(?:trad(?:e|es|ing)|volume)\b" + _GAP + r"(?:at least|a minimum of|minimum of|"
        r"minimum|min\.?|a total of|over|more than|≥|>=|of)\s*" + _AMOUNT,
        re.I,
    ),
    re.compile(r"\btrad(?:e|es|ing)\s+" + _AMOUNT, re.I),
]
_POOL = [
    re.compile(r"(?:prize|reward|bonus)\s+pool\s+(?:of\s+)?(?:up to\s+)?" + _AMOUNT, re.I),
    re.compile(r"share\s+(?:a\s+|the\s+)?(?:total\s+of\s+)?(?:up to\s+)?" + _AMOUNT, re.I),
    re.compile(_AMOUNT + r"\s+(?:in\s+)?(?:prizes|rewards|prize pool|reward pool)", re.I),
]
_PER_USER = [
    re.compile(
        r"(?:each|every|per)\s+(?:eligible\s+|qualified\s+|qualifying\s+)?"
        r"(?:user|trader|participant|winner)s?\s+(?:will\s+)?(?:receive|get|earn|win)s?\s+"
        r"(?:up to\s+)?" + _AMOUNT,
        re.I,
    ),
    re.compile(r"\beach\s+(?:receive|get|earn|win)s?\s+(?:up to\s+)?" + _AMOUNT, re.I),
    re.compile(
        _AMOUNT + r"\s+(?:each|per (?:user|trader|participant|winner))\b"
        r"(?!\s+(?:will\s+)?(?:receive|get|earn|win))",
        re.I,
    ),
]
_WINNERS = [
    re.compile(r"top\s+(\d[\d,]*)\s+(?:traders|users|participants|winners|ranked)", re.I),
    re.compile(r"(\d[\d,]*)\s+(?:lucky\s+)?winners", re.I),
    re.compile(r"first\s+(\d[\d,]*)\s+(?:eligible\s+)?(?:users|traders|participants)", re.I),
]
_MULTIPLIERS = {"k": 1e3, "thousand": 1e3, "m": 1e6, "million": 1e6}
_USD = frozenset({"USD", "USDT", "USDC", "BUSD", "FDUSD", "TUSD", "DAI"})


class PromoTerms(msgspec.Struct, frozen=True):
    """What a promo asks and pays; None where neither the event nor its text says."""

    min_volume: float | None = None
    volume_currency: str = ""
    reward_pool: float | None = None
    reward_per_user: float | None = None
    reward_currency: str = ""
    winners: int | None = None


def _amount(match: re.Match[str]) -> tuple[float, str] | None:
    value = float(match.group("num").replace(",", ""))
    mult = match.group("mult")
    if mult:
        value *= _MULTIPLIERS[mult.lower()]
    currency = match.group("ccy") or ("USD" if match.group("dollar") else "")
    return (value, currency) if value > 0 and math.isfinite(value) else None


def _first(patterns: list[re.Pattern[str]], text: str) -> tuple[float, str] | None:
    for pattern in patterns:
        for match in pattern.finditer(text):
            found = _amount(match)
            if found is not None:
                return found
    return None


def parse_promo(text: str) -> PromoTerms:
    """Read the volume requirement, the rewards and the winner count from announcement text,
    e.g. "Trade at least 10,000 USDT of NEW to share a prize pool of 50,000 USDT among the
    top 100 traders" -> volume 10,000 USDT, pool 50,000 USDT, 100 winners. Amounts take
    thousands separators (10,000), decimals, K/M suffixes and a leading $ (= USD)."""
    volume = _first(_VOLUME, text)
    pool = _first(_POOL, text)
    per_user = _first(_PER_USER, text)
    winners = None
    for pattern in _WINNERS:
        match = pattern.search(text)
        if match is not None and int(match.group(1).replace(",", "")) > 0:
            winners = int(match.group(1).replace(",", ""))
            break
    reward = per_user or pool
    return PromoTerms(
        min_volume=volume[0] if volume else None,
        volume_currency=volume[1] if volume else "",
        reward_pool=pool[0] if pool else None,
        reward_per_user=per_user[0] if per_user else None,
        reward_currency=reward[1] if reward else "",
        winners=winners,
    )


def promo_terms(event: PromoAnnouncement) -> PromoTerms:
    """The event's parsed fields, completed from its title and text."""
    parsed = parse_promo(f"{event.title}\n{event.text}")
    return PromoTerms(
        min_volume=event.min_volume if event.min_volume is not None else parsed.min_volume,
        volume_currency=event.volume_currency or parsed.volume_currency,
        reward_pool=event.reward_pool if event.reward_pool is not None else parsed.reward_pool,
        reward_per_user=(
            event.reward_per_user if event.reward_per_user is not None else parsed.reward_per_user
        ),
        reward_currency=event.reward_currency or parsed.reward_currency,
        winners=event.winners if event.winners is not None else parsed.winners,
    )


class PromoWatcherParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    notional: Annotated[float, Meta(gt=0)] = 1000.0
    fee_bps: Annotated[float, Meta(ge=0)] = 10.0
    slippage_bps: Annotated[float, Meta(ge=0)] = 5.0
    win_prob: Annotated[float, Meta(gt=0, le=1)] = 0.5
    expected_participants: Annotated[int, Meta(ge=1)] = 1000
    min_edge: float = 0.0
    hold_s: Annotated[float, Meta(gt=0)] = 86_400.0
    max_wait_s: Annotated[float, Meta(gt=0)] = 3600.0

    def __post_init__(self) -> None:
        require_finite(self)


class Pending(msgspec.Struct):
    key: str
    ts: int
    title: str
    ends_at: int
    terms: PromoTerms


class Campaign(msgspec.Struct):
    """One symbol: a promo waiting for its first bar, or a position held until ``exit_at``
    on ``series``; ``last_key`` is the last promo acted on, ``note`` the last evaluation."""

    pending: Pending | None = None
    qty: float = 0.0
    series: str = ""
    exit_at: int = 0
    last_key: str = ""
    note: str = ""


class PromoWatcherState(msgspec.Struct):
    symbols: dict[str, Campaign] = msgspec.field(default_factory=dict)


def _unit(currency: str) -> str:
    upper = currency.upper()
    return "USD" if upper in _USD else upper


class PromoWatcher:
    external = ("promo",)
    tunable = False

    def __init__(self, name: str, params: PromoWatcherParams) -> None:
        self.name = name
        self.params = params
        self.state = PromoWatcherState()
        p = params
        self.model_tag = (
            f"promo_watcher-fee{p.fee_bps:g}-slip{p.slippage_bps:g}-p{p.win_prob:g}"
            f"-hold{p.hold_s:g}"
        )

    def on_event(self, event: Event) -> Sequence[Event]:
        if not isinstance(event, PromoAnnouncement) or not event.symbol:
            return []
        campaign = self.state.symbols.get(event.symbol)
        if campaign is None:
            campaign = self.state.symbols[event.symbol] = Campaign()
        key = content_id(*event.identity())
        if campaign.qty > 0 or campaign.pending is not None or key == campaign.last_key:
            return []
        campaign.pending = Pending(key, event.ts, event.title, event.ends_at, promo_terms(event))
        return []

    def on_bar(self, bar: Bar) -> list[Signal]:
        campaign = self.state.symbols.get(bar.symbol)
        if campaign is None:
            return []
        if campaign.qty > 0:
            if (
                f"{bar.venue}|{bar.interval}" != campaign.series
                or bar.close_time < campaign.exit_at
            ):
                return []
            campaign.qty = 0.0
            return [self._signal(bar, 0.0, "promo holding period over")]
        pending = campaign.pending
        if pending is None or bar.close_time <= pending.ts:
            return []
        campaign.pending = None
        campaign.last_key = pending.key
        if bar.close_time > pending.ts + round(self.params.max_wait_s * NS):
            campaign.note = f"lapsed: no bar within {self.params.max_wait_s:g} s"
            return []
        if pending.ends_at and pending.ends_at <= bar.close_time:
            campaign.note = "promo already over"
            return []
        verdict, edge = self.evaluate(pending.terms, bar)
        campaign.note = verdict
        if edge is None or edge <= self.params.min_edge:
            return []
        campaign.qty = self.params.notional / bar.close
        campaign.series = f"{bar.venue}|{bar.interval}"
        exit_at = bar.close_time + round(self.params.hold_s * NS)
        campaign.exit_at = min(exit_at, pending.ends_at) if pending.ends_at else exit_at
        return [self._signal(bar, campaign.qty, f"promo {pending.title!r}: {verdict}")]

    def evaluate(self, terms: PromoTerms, bar: Bar) -> tuple[str, float | None]:
        """(what was decided and why, expected reward minus cost or None when it cannot be
        valued), in the volume's currency."""
        p = self.params
        if terms.min_volume is None:
            return "skipped: no volume requirement found", None
        base, _, quote = bar.symbol.partition("/")
        base, quote = _unit(base), _unit(quote.partition(":")[0])
        volume_unit = _unit(terms.volume_currency)
        volume = terms.min_volume
        if volume_unit == base:  # volume counted in the coin: value it at the close
            volume, volume_unit = volume * bar.close, quote
        if terms.reward_per_user is not None:
            reward = terms.reward_per_user * (p.win_prob if terms.winners else 1.0)
            how = "per user" + (
                f", first {terms.winners}, p {p.win_prob:g}" if terms.winners else ""
            )
        elif terms.reward_pool is not None and terms.winners:
            reward = terms.reward_pool / terms.winners * p.win_prob
            how = f"pool {terms.reward_pool:g} / {terms.winners} winners x p {p.win_prob:g}"
        elif terms.reward_pool is not None:
            reward = terms.reward_pool / p.expected_participants
            how = f"pool {terms.reward_pool:g} / {p.expected_participants} participants"
        else:
            return "skipped: no reward found", None
        reward_unit = _unit(terms.reward_currency)
        if reward_unit == base:
            reward, reward_unit = reward * bar.close, quote
        if reward_unit and volume_unit and reward_unit != volume_unit:
            return f"skipped: reward in {reward_unit}, volume in {volume_unit}", None
        cost = volume * (p.fee_bps + p.slippage_bps) / 10_000.0
        edge = reward - cost
        verdict = (
            f"expected reward {reward:.2f} ({how}) vs cost {cost:.2f} (volume {volume:g} at "
            f"{p.fee_bps:g}+{p.slippage_bps:g} bps): edge {edge:+.2f}"
        )
        return verdict, edge

    def _signal(self, bar: Bar, target: float, reason: str) -> Signal:
        return Signal(
            ts=bar.close_time,
            strategy=self.name,
            venue=bar.venue,
            symbol=bar.symbol,
            model_tag=self.model_tag,
            target_position=target,
            reason=reason,
        )

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state)

    def restore(self, data: bytes) -> None:
        self.state = msgspec.msgpack.decode(data, type=PromoWatcherState)
