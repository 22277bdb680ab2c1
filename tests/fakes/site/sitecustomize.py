"""Puts a test's scaled exchange clock into a subprocess (``KEEL_TEST_CLOCK``).

A test starting ``keel up`` or ``keel run marketdata`` puts this folder first on
``PYTHONPATH`` and sets ``KEEL_TEST_CLOCK`` to ``ScaledClock.to_env()``; Python imports this
module at start-up, and ``services.runtime.clock.system_clock`` then returns that clock, so
the worker and the exchange fake agree on exchange time. ccxt's rate limiter stays on, paced
in exchange time too (Kraken's one call a second would otherwise cost an exchange minute at
rate 60).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _install(text: str) -> None:
    root = Path(__file__).resolve().parents[3]
    if str(root) not in sys.path:
        sys.path.append(str(root))
    from services.runtime import clock as clock_module
    from tests.fakes.clock import ScaledClock

    clock = ScaledClock.from_env(text)

    def system_clock() -> ScaledClock:
        return clock

    clock_module.system_clock = system_clock  # type: ignore[assignment]

    from services.venues import ccxt_exchange

    build = ccxt_exchange.build_exchange

    def paced_exchange(venue, secrets=None):  # type: ignore[no-untyped-def]
        exchange = build(venue, secrets)
        exchange.rateLimit = exchange.rateLimit / clock.rate
        exchange.tokenBucket = {
            **exchange.tokenBucket,
            "refillRate": 1 / exchange.rateLimit,
            "rateLimit": exchange.rateLimit,
        }
        exchange.init_throttler()
        return exchange

    ccxt_exchange.build_exchange = paced_exchange  # type: ignore[assignment]


if os.environ.get("KEEL_TEST_CLOCK"):
    _install(os.environ["KEEL_TEST_CLOCK"])
