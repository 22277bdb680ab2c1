"""Puts a test's scaled exchange clock into a subprocess (``KEEL_TEST_CLOCK``).

A test starting ``keel up`` or ``keel run marketdata`` puts this folder first on
``PYTHONPATH`` and sets ``KEEL_TEST_CLOCK`` to ``ScaledClock.to_env()``; Python imports this
module at start-up, and ``services.runtime.clock.system_clock`` then returns that clock, so
the worker and the exchange fake agree on exchange time.
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


if os.environ.get("KEEL_TEST_CLOCK"):
    _install(os.environ["KEEL_TEST_CLOCK"])
