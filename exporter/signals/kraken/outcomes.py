"""The closed set of probe outcomes, and the one pure function that maps a Kraken reply onto it.

Kraken usually answers HTTP 200 with an `error` array, so the body decides first; the HTTP status
decides when the body says nothing specific (a proxy's 429 or 502 page), and transport
exceptions decide when there is no reply at all.
"""

from __future__ import annotations

from collections.abc import Sequence
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

# Exact Kraken error strings (everything before a second ':' detail) and what they mean for us.
# `EOrder:Insufficient funds` is deliberately absent, so it is an api_error: the API answered
# correctly and retrying cannot help; the purchase collector classifies it as insufficient_funds.
_KRAKEN_ERRORS: Final[dict[str, Outcome]] = {
    "EAPI:Rate limit exceeded": Outcome.RATE_LIMITED,
    "EOrder:Rate limit exceeded": Outcome.RATE_LIMITED,
    "EGeneral:Too many requests": Outcome.RATE_LIMITED,
    "EAPI:Invalid key": Outcome.AUTH_ERROR,
    "EAPI:Invalid signature": Outcome.AUTH_ERROR,
    "EAPI:Invalid nonce": Outcome.INVALID_NONCE,
    "EGeneral:Temporary lockout": Outcome.AUTH_ERROR,
    "EGeneral:Permission denied": Outcome.AUTH_ERROR,
    "EService:Unavailable": Outcome.SERVICE_UNAVAILABLE,
    "EService:Busy": Outcome.SERVICE_UNAVAILABLE,
    "EService:Market in cancel_only mode": Outcome.SERVICE_UNAVAILABLE,
    "EService:Market in post_only mode": Outcome.SERVICE_UNAVAILABLE,
    "EService:Deadline elapsed": Outcome.TIMEOUT,
    # Kraken's own 500: the request was fine, the exchange failed; a retry may succeed.
    "EGeneral:Internal error": Outcome.SERVER_ERROR,
}

_STATUS_OUTCOMES: Final[dict[int, Outcome]] = {
    429: Outcome.RATE_LIMITED,
    401: Outcome.AUTH_ERROR,
    403: Outcome.AUTH_ERROR,
    503: Outcome.SERVICE_UNAVAILABLE,
}


def classify_error(message: str) -> Outcome:
    """Outcome of one Kraken error string; unknown errors are api_error."""
    parts = message.strip().split(":", 2)
    return _KRAKEN_ERRORS.get(":".join(parts[:2]), Outcome.API_ERROR)


def kraken_errors(errors: Sequence[str]) -> list[str]:
    """The real errors of an `error` array: entries starting with `W` are warnings, not failures."""
    return [e for e in errors if not e.startswith("W")]


def classify_errors(errors: Sequence[str]) -> Outcome | None:
    """Outcome of an `error` array, None when it holds no error.

    The first specific outcome wins over api_error, so `[EGeneral:Invalid arguments,
    EAPI:Rate limit exceeded]` is rate_limited: that is the one an operator can act on.
    """
    outcomes = [classify_error(e) for e in kraken_errors(errors)]
    specific = [o for o in outcomes if o is not Outcome.API_ERROR]
    if specific:
        return specific[0]
    return Outcome.API_ERROR if outcomes else None


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


def classify(
    *,
    status: int | None = None,
    errors: Sequence[str] | None = (),
    exc: BaseException | None = None,
) -> Outcome:
    """Outcome of one call.

    `errors` is the body's `error` array, or None when the body was not Kraken JSON; `exc` is the
    transport exception when there was no reply. A specific body error beats the HTTP status
    (Kraken's own words are more precise than a status), the status beats a generic body error.
    """
    if exc is not None:
        return classify_exception(exc)
    from_body = classify_errors(errors) if errors is not None else None
    if from_body is not None and from_body is not Outcome.API_ERROR:
        return from_body
    from_status = classify_status(status) if status is not None else None
    if from_status is not None:
        return from_status
    if from_body is not None or errors is None:
        return Outcome.API_ERROR
    return Outcome.SUCCESS
