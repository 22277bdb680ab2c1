"""How long the bot waits after a failed Bot API call (pure: the loop sleeps it)."""

from __future__ import annotations

BASE_S = 1.0


def backoff_s(failures: int, retry_after: float | None, cap_s: float) -> float:
    """Telegram's ``retry_after`` (a 429) is obeyed as given; otherwise the wait doubles per
    consecutive failure from one second, up to ``cap_s``."""
    if retry_after is not None and retry_after > 0:
        return float(retry_after)
    if failures <= 0:
        return 0.0
    return min(cap_s, BASE_S * 2.0 ** min(failures - 1, 30))
