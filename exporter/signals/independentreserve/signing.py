"""Independent Reserve's signature for private calls.

signature = uppercase hex of HMAC-SHA256(key=the API secret as ASCII,
message="<full URL>,apiKey=<key>,nonce=<nonce>[,<name>=<value>...]"), with the parameters in the
order the JSON body sends them; the body then carries apiKey, nonce and signature. That is the
scheme of https://www.independentreserve.com/features/api ("Authentication") as the exchange's own
clients implement it (github.com/independentreserve/dotNetApiClient, HttpWorker.GetSignature, and
the pre-request script of its Postman collection). The URL is the one the request goes to, base
URL included, so a fake server on 127.0.0.1 verifies against its own address.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence


def check_secret(secret: str) -> str:
    """The secret, stripped; ValueError without echoing it, so the message is safe to log."""
    secret = secret.strip()
    if not secret:
        raise ValueError("the Independent Reserve API secret is empty")
    if not secret.isascii():
        raise ValueError("the Independent Reserve API secret is not ASCII")
    return secret


def message(url: str, params: Sequence[tuple[str, object]]) -> str:
    """The string that is signed: the URL, then each `name=value`, comma-separated."""
    return ",".join([url, *(f"{name}={value}" for name, value in params)])


def sign(url: str, params: Sequence[tuple[str, object]], secret: str) -> str:
    """Signature of one private call; `params` are the body's parameters before `signature`."""
    mac = hmac.new(secret.encode("ascii"), message(url, params).encode("ascii"), hashlib.sha256)
    return mac.hexdigest().upper()
