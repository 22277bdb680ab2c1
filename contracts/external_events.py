"""External events on ``ext.>``: facts from outside the market feed (announcements,
social sentiment) that event-driven strategies react to."""

from __future__ import annotations

from contracts.event_base import Event, Int64, require


class External(Event, frozen=True):
    """Base of the external events on ``ext.>`` (announcements, social sentiment): facts
    from outside the market feed that event-driven strategies react to. ``source`` names the
    feeder (a subject token). ``identity()`` is what makes two copies the same fact: their
    id derives from it (``contracts/envelope.py`` ``external_envelope``), so a feeder that
    sends one announcement twice is de-duplicated."""

    source: str

    def identity(self) -> tuple[str | int, ...]:
        """By default every field but ``ts``: the same fact seen again is the same fact.
        Subclasses narrow or widen it (a sentiment reading is a point in time)."""
        return (
            type(self).__name__,
            *(getattr(self, f) for f in self.__struct_fields__ if f != "ts"),
        )


class ListingAnnouncement(External, frozen=True):
    """A venue announced it lists ``symbol``; ``ts`` is when the announcement was seen,
    ``listing_time`` when trading opens (0: not given, take ``ts``)."""

    venue: str
    symbol: str
    base: str = ""
    quote: str = ""
    listing_time: Int64 = 0
    title: str = ""
    url: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.symbol), "symbol must not be empty")
        require(self.listing_time >= 0, "listing_time must be >= 0")

    def identity(self) -> tuple[str | int, ...]:
        """The announcement, not when it was seen: re-sending it later is the same fact."""
        return ("listing", self.source, self.venue, self.symbol, self.listing_time, self.title)


class SocialSentiment(External, frozen=True):
    """A sentiment reading for ``symbol`` (the market symbol the feeder maps the social
    ticker to): ``score`` in [-1, 1], ``mentions`` in the feeder's window, ``velocity`` the
    feeder's rate of change of mentions (e.g. 2.0 = twice the previous window)."""

    symbol: str
    score: float
    mentions: Int64 = 0
    velocity: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.symbol), "symbol must not be empty")
        require(-1.0 <= self.score <= 1.0, "score must be within [-1, 1]")
        require(self.mentions >= 0, "mentions must be >= 0")

    def identity(self) -> tuple[str | int, ...]:
        """A reading is identified by its source, symbol and time."""
        return ("sentiment", self.source, self.symbol, self.ts)


class PromoAnnouncement(External, frozen=True):
    """An exchange promotion (trading competition, volume campaign). ``text`` is parsed by
    the promo watcher; the optional fields, when a feeder already parsed them, win over the
    text: ``min_volume`` (trading volume required, in ``volume_currency``), ``reward_pool``
    (shared by ``winners`` when given), ``reward_per_user`` (what each qualifying user gets),
    both in ``reward_currency``; ``starts_at``/``ends_at`` (0: not given)."""

    venue: str
    symbol: str = ""
    title: str = ""
    text: str = ""
    url: str = ""
    starts_at: Int64 = 0
    ends_at: Int64 = 0
    min_volume: float | None = None
    volume_currency: str = ""
    reward_pool: float | None = None
    reward_per_user: float | None = None
    reward_currency: str = ""
    winners: Int64 | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.title or self.text), "give a title or a text")
        require(self.starts_at >= 0 and self.ends_at >= 0, "starts_at and ends_at must be >= 0")
        require(
            not (self.starts_at and self.ends_at) or self.ends_at >= self.starts_at,
            "ends_at before starts_at",
        )
        for name in ("min_volume", "reward_pool", "reward_per_user"):
            value = getattr(self, name)
            require(value is None or value > 0, f"{name} must be > 0")
        require(self.winners is None or self.winners >= 1, "winners must be >= 1")

    def identity(self) -> tuple[str | int, ...]:
        return ("promo", self.source, self.venue, self.symbol, self.title, self.text, self.url)
