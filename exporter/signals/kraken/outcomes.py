"""The one pure function that maps a Kraken reply onto the closed set of probe outcomes.

Kraken usually answers HTTP 200 with an `error` array, so the body decides first; the HTTP status
decides when the body says nothing specific (a proxy's 429 or 502 page), and transport
exceptions decide when there is no reply at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

# The closed set is every exchange's (exporter/signals/outcomes.py); Kraken's code imports it here.
from ..outcomes import OUTCOMES, Outcome, classify_exception, classify_status

__all__ = [
    "OUTCOMES", "Outcome", "classify", "classify_error", "classify_errors", "classify_exception",
    "classify_status", "kraken_errors",
]  # fmt: skip


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
