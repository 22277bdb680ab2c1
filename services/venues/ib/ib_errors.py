"""IB's error codes as ccxt's exception classes, so the gateway's ``classify`` reads them as
it reads any exchange's: a refusal (``rejected``), an outcome nobody knows (``unknown``) or a
rate limit (``backoff``).

The message quotes IB's code and text as ``{"code": ..., "msg": ...}``, which is where the
gateway's ``exchange_reason`` finds an exchange's own words.
"""

from __future__ import annotations

import json

import ccxt

PACING = frozenset({100, 162, 420})
FUNDS_WORDS = ("MARGIN", "EQUITY", "BUYING POWER", "INSUFFICIENT", "FUNDS")
NOT_FOUND = frozenset({135, 161, 10147, 10148})
"""135: no order with that id; 161: not in a cancellable state; 10147: the order to cancel
is not found; 10148: it cannot be canceled (already filled or canceled)."""
REFUSED_NEW = frozenset({321, 434})
"""Codes ib_async takes for warnings (a modified order stays live) that refuse a new order:
321 the request did not validate, 434 a size of zero."""
NOT_ENDING = frozenset({104, 161, 461, 10147, 10148})
"""Errors about a request on an order (a cancel, a modification) that leave it as it was:
104 a filled order cannot be modified, 461 a quantity below what filled."""


def quoted(code: int, text: str) -> str:
    return f"ib {json.dumps({'code': code, 'msg': text})}"


def order_error(code: int, text: str) -> ccxt.BaseError:
    """What IB's refusal of an order means: 201 with a margin or funds reason is
    ``InsufficientFunds``, any other refusal ``InvalidOrder``; pacing is a rate limit."""
    message = quoted(code, text)
    if code in PACING:
        return ccxt.RateLimitExceeded(message)
    if code == 201 and any(word in text.upper() for word in FUNDS_WORDS):
        return ccxt.InsufficientFunds(message)
    if code in NOT_FOUND:
        return ccxt.OrderNotFound(message)
    return ccxt.InvalidOrder(message)


def not_ready(why: str) -> ccxt.NetworkError:
    """Not connected, IB's link lost (1100) or the socket dropped mid-answer: nothing is
    known, so the gateway treats the outcome as unknown and never as empty."""
    return ccxt.NetworkError(f"ib not connected: {why}")


def request_error(code: int, text: str) -> ccxt.BaseError:
    """A failed query: pacing backs off; anything else is a failed query (never empty)."""
    if code in PACING:
        return ccxt.RateLimitExceeded(quoted(code, text))
    return ccxt.ExchangeNotAvailable(quoted(code, text))


def refusal(code: int, text: str) -> str:
    """A refusal in the words the gateway gives an exception's (``exchange_reason``): the
    ccxt class, IB's code and IB's text; the same whichever path reports it first."""
    return f"{type(order_error(code, text)).__name__} {code}: {text}"
