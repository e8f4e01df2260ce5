"""BTC Markets' API v3 request signature.

BM-AUTH-SIGNATURE = base64(HMAC-SHA512(key=base64decode(secret), message=method + path + timestamp
+ body)), where `path` starts with /v3/ and has no query string, `timestamp` is the Unix time in
milliseconds also sent as BM-AUTH-TIMESTAMP, and `body` is the exact JSON sent (empty for GET).
That is the scheme of https://docs.btcmarkets.net/v3/#section/Authentication; the test suite
reproduces the signature in the exchange's own SDK test (github.com/BTCMarkets/btcmarkets-node-sdk,
test/authorization.test.ts) byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac


def decode_secret(secret: str) -> bytes:
    """The HMAC key from a base64 API secret; ValueError without echoing the secret."""
    try:
        key = base64.b64decode(secret.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the BTC Markets API secret is not valid base64") from None
    if not key:
        raise ValueError("the BTC Markets API secret is empty")
    return key


def message(method: str, path: str, timestamp: int | str, body: str = "") -> str:
    """The string that is signed; `path` without its query string."""
    return f"{method.upper()}{path}{timestamp}{body}"


def sign(method: str, path: str, timestamp: int | str, body: str, secret: str | bytes) -> str:
    """BM-AUTH-SIGNATURE for one request; `secret` is the base64 secret or its decoded bytes."""
    key = secret if isinstance(secret, bytes) else decode_secret(secret)
    mac = hmac.new(key, message(method, path, timestamp, body).encode(), hashlib.sha512)
    return base64.b64encode(mac.digest()).decode("ascii")
