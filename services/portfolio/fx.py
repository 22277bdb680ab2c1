"""Conversion rates into the portfolio's base currency, from the bars the portfolio observes.

Currencies are keys: ``""`` is the base currency, any other key a currency name. A spot bar
``A/Q`` closing at ``c`` is a *leg*: one ``A`` is worth ``c`` ``Q``. The rate of a tracked
currency ``C`` (what one ``C`` is worth in the base), in order of precedence:

1. **direct**: the latest bar of ``C/BASE`` (rate = close) or ``BASE/C`` (rate = 1 / close),
   whichever closed last, however old: it is the market for exactly this conversion;
2. **cross**: through every asset ``A`` traded against both (``BTC/USD`` and ``BTC/USDC``
   give USDC in USD as ``close(A/BASE) / close(A/C)``), counting an asset only when both its
   legs closed within ``max_skew`` of the bar being processed; several assets give their
   median;
3. **via** one currency whose rate is direct or cross: the latest bar of ``C/Q`` (rate =
   close x rate(Q)) or ``Q/C``, e.g. BNB in USD from ``BNB/USDT`` and ``USDT/USD``;
4. the last rate found by 1 to 3 (a cross whose legs went stale keeps its last value);
5. **assumed**: ``[portfolio.rates]`` in the config, until a rate is observed;
6. **par** (1.0) until anything is known: right for stablecoins against their peg, which is
   why anything else held before its market is seen (a fee currency) should get an assumed
   rate.

Perpetuals' prices are not used as legs (they trade at a basis to spot). Only tracked
currencies (held, quoted, charged or funded in) get rates; legs are kept for every pair, so
a currency tracked late starts from what was already observed.
"""

from __future__ import annotations

import msgspec

BASE = ""
_OBSERVED = ("direct", "cross")


class FxState(msgspec.Struct):
    legs: dict[str, dict[str, tuple[int, float]]] = msgspec.field(default_factory=dict)
    """asset -> quote -> (close time, close) of the latest spot bar."""
    quoted: dict[str, list[str]] = msgspec.field(default_factory=dict)
    """quote -> the assets that have a leg in it (for crosses)."""
    rates: dict[str, float] = msgspec.field(default_factory=lambda: {BASE: 1.0})
    """tracked currency -> its rate into the base (the base itself: 1.0)."""
    source: dict[str, str] = msgspec.field(default_factory=lambda: {BASE: "base"})
    """tracked currency -> where its rate comes from: direct, cross, assumed, par, base."""


class Fx:
    """The rules above over an ``FxState`` (which is part of the portfolio's snapshot)."""

    def __init__(self, state: FxState, assumed: dict[str, float], max_skew_ns: int) -> None:
        self.state = state
        self.assumed = assumed
        self.max_skew = max_skew_ns

    def legs_of(self, asset: str) -> dict[str, tuple[int, float]]:
        legs = self.state.legs.get(asset)
        if legs is None:
            legs = self.state.legs[asset] = {}
        return legs

    def changed(self, asset: str, quote: str, legs: dict[str, tuple[int, float]], ts: int) -> bool:
        """The leg ``asset/quote`` moved (the caller set ``legs[quote]`` to its bar's close
        time and close): update the rates it can serve (a direct rate is only ever replaced
        by a newer direct one). Whether any rate changed."""
        st = self.state
        source = st.source
        moved = False
        if quote == BASE:  # direct for the asset; a cross leg for the asset's other quotes
            if asset in source:
                moved = self._update(asset, ts)
            for c in legs:
                if c and c != asset and source.get(c, "direct") != "direct":
                    moved = self._update(c, ts) or moved
        elif asset == BASE:  # direct for the quote
            if quote in source:
                moved = self._update(quote, ts)
        else:
            held = source.get(quote)
            if held is not None and held != "direct" and (BASE in legs or held != "cross"):
                moved = self._update(quote, ts)  # a cross leg, or a hop for the quote
            held = source.get(asset)
            if held is not None and held not in _OBSERVED:
                moved = self._update(asset, ts) or moved  # a hop for the asset
        if moved and "via" in source.values():
            for c, how in list(source.items()):
                if how == "via":
                    self._update(c, ts)
        return moved

    def track(self, currency: str, now: int) -> None:
        """Start converting ``currency``: from what was observed, else assumed, else par."""
        st = self.state
        if currency in st.rates:
            return
        assumed = self.assumed.get(currency)
        st.rates[currency] = 1.0 if assumed is None else assumed
        st.source[currency] = "par" if assumed is None else "assumed"
        self._update(currency, now)

    def _update(self, currency: str, now: int) -> bool:
        """Whether the rate changed."""
        found = self._observed(currency, now)
        if found is None:
            return False
        rate, source = found
        rates = self.state.rates
        moved = rates[currency] != rate
        rates[currency] = rate
        self.state.source[currency] = source
        return moved

    def _observed(self, currency: str, now: int) -> tuple[float, str] | None:
        legs = self.state.legs
        own = legs.get(currency)
        over_base = own.get(BASE) if own is not None else None  # C/BASE
        base_legs = legs.get(BASE)
        under_base = base_legs.get(currency) if base_legs is not None else None  # BASE/C
        if over_base is not None and (under_base is None or over_base[0] >= under_base[0]):
            return over_base[1], "direct"
        if under_base is not None:
            return 1.0 / under_base[1], "direct"
        crosses = []
        skew = self.max_skew
        for asset in self.state.quoted.get(currency, ()):
            if asset == BASE:
                continue
            asset_legs = legs[asset]
            in_base = asset_legs.get(BASE)
            if in_base is None:
                continue
            in_currency = asset_legs[currency]
            if abs(now - in_base[0]) <= skew and abs(now - in_currency[0]) <= skew:
                crosses.append(in_base[1] / in_currency[1])
        if crosses:
            crosses.sort()
            middle = len(crosses) // 2
            if len(crosses) % 2:
                return crosses[middle], "cross"
            return (crosses[middle - 1] + crosses[middle]) / 2, "cross"
        return self._via(currency)

    def _via(self, currency: str) -> tuple[float, str] | None:
        """One hop through a currency whose rate was observed (direct or cross): the latest
        bar of ``C/Q`` (rate = close x rate(Q)) or ``Q/C`` (rate = rate(Q) / close)."""
        st = self.state
        best: tuple[int, float] | None = None
        own = st.legs.get(currency)
        for quote, (ts, close) in (own or {}).items():
            if st.source.get(quote) in _OBSERVED and (best is None or ts > best[0]):
                best = (ts, close * st.rates[quote])
        for asset in st.quoted.get(currency, ()):
            if st.source.get(asset) in _OBSERVED:
                ts, close = st.legs[asset][currency]
                if best is None or ts > best[0]:
                    best = (ts, st.rates[asset] / close)
        return None if best is None else (best[1], "via")
