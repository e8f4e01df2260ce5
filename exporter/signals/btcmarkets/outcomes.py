"""BTC Markets (API v3) replies mapped onto the probe's closed outcome set.

v3 answers 200 with the bare result and any failure with a 4xx/5xx status and a JSON body
`{"code": "InvalidAuthSignature", "message": "invalid signature"}`. The status decides (401 and
403 auth, 429 rate limited, 503 unavailable, other 5xx server error, other 4xx api error); the
code only refines it where the status cannot tell: a timestamp outside the exchange's window is
the clock or a shared key at fault (invalid_nonce), not a rejected key.
"""

from __future__ import annotations

from typing import Any, Final

from ..outcomes import Outcome, classify_status
from ..rest import INVALID_NONCE

# The codes the status alone would misfile; every other code is filed by its status.
NONCE_CODES: Final = frozenset({"InvalidAuthTimestamp", "InvalidTimeWindow"})


def error_code(body: Any) -> str | None:
    """The `code` of an error body, None when the body is not BTC Markets' error JSON."""
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        return str(body["code"])
    return None


def is_nonce_fault(body: Any) -> bool:
    """The key was fine, the request's timestamp was outside the exchange's window."""
    return error_code(body) in NONCE_CODES


def classify(status: int, body: Any) -> Outcome:
    """Outcome of one reply: the codes that refine a status, then the status."""
    if 200 <= status < 300:
        return Outcome.SUCCESS
    if is_nonce_fault(body):
        return INVALID_NONCE
    return classify_status(status) or Outcome.API_ERROR
