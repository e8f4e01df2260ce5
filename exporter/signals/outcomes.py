"""The closed set of probe outcomes, for every exchange: the `outcome` label of the probe metrics,
and what an HTTP status or a transport failure alone says about a call.

Each exchange's package maps its own replies onto this set (exporter/signals/<exchange>/outcomes.py);
exporter/signals/exchange.py says which outcomes mean "down" and which "our credentials".
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import aiohttp


class Outcome(StrEnum):
    """One call's result; the values are the `outcome` label of the probe metrics."""

    SUCCESS = "success"
    TIMEOUT = "timeout"
    NETWORK_ERROR = "network_error"
    RATE_LIMITED = "rate_limited"
    AUTH_ERROR = "auth_error"
    # A configuration fault, not a refused credential: replicas share a key (their nonces
    # interleave) or the clock went back. It never counts as auth_error, so it never pages as one.
    INVALID_NONCE = "invalid_nonce"
    SERVICE_UNAVAILABLE = "service_unavailable"
    SERVER_ERROR = "server_error"
    API_ERROR = "api_error"


OUTCOMES: Final[tuple[str, ...]] = tuple(o.value for o in Outcome)

_STATUS_OUTCOMES: Final[dict[int, Outcome]] = {
    429: Outcome.RATE_LIMITED,
    401: Outcome.AUTH_ERROR,
    403: Outcome.AUTH_ERROR,
    503: Outcome.SERVICE_UNAVAILABLE,
}


def classify_status(status: int) -> Outcome | None:
    """Outcome of an HTTP status alone, None for 2xx (the body decides)."""
    if 200 <= status < 300:
        return None
    if status in _STATUS_OUTCOMES:
        return _STATUS_OUTCOMES[status]
    return Outcome.SERVER_ERROR if status >= 500 else Outcome.API_ERROR


def classify_exception(exc: BaseException) -> Outcome:
    """Outcome of a transport failure (no usable reply)."""
    # Checked first: aiohttp's ServerTimeoutError is also a ClientConnectionError.
    if isinstance(exc, TimeoutError):
        return Outcome.TIMEOUT
    # DNS failures, refused and reset connections, and bodies cut off mid-way.
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | OSError):
        return Outcome.NETWORK_ERROR
    return Outcome.API_ERROR
