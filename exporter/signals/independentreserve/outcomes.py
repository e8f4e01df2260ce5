"""Independent Reserve replies mapped onto the probe's closed outcome set.

Independent Reserve answers 200 with the result, and any failure with a non-200 status and a JSON
body `{"Message": "..."}`. Its credential errors all begin "Invalid credentials" ("(bad
signature)", "(bad nonce). This nonce=..., last valid nonce=...") and have come with HTTP 400 as
well as 401, so the message decides before the status: a rejected key is auth evidence, never
availability (a generic client that maps 400 to "exchange not available" gets this wrong).
"""

from __future__ import annotations

from typing import Any, Final

from ..outcomes import Outcome, classify_status
from ..rest import INVALID_NONCE

_NONCE_PREFIX: Final = "invalid credentials (bad nonce)"
_CREDENTIALS_PREFIX: Final = "invalid credentials"


def error_message(body: Any) -> str | None:
    """The `Message` of an error body, None when the body is not Independent Reserve's JSON."""
    if isinstance(body, dict) and isinstance(body.get("Message"), str):
        return str(body["Message"])
    return None


def is_nonce_fault(message: str) -> bool:
    """The key was fine, the nonce was not larger than the last one the exchange saw."""
    return message.strip().lower().startswith(_NONCE_PREFIX)


def classify_message(message: str) -> Outcome | None:
    """Outcome of a known error message, None for messages that do not say more than the status."""
    if is_nonce_fault(message):
        return INVALID_NONCE
    if message.strip().lower().startswith(_CREDENTIALS_PREFIX):
        return Outcome.AUTH_ERROR
    return None


def classify(status: int, body: Any) -> Outcome:
    """Outcome of one reply: a known message first, then the HTTP status."""
    message = error_message(body)
    if not 200 <= status < 300 and message is not None:
        from_message = classify_message(message)
        if from_message is not None:
            return from_message
    return classify_status(status) or Outcome.SUCCESS
