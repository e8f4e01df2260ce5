"""Kraken's API-Sign for private REST calls, and the strictly increasing nonce it needs.

API-Sign = base64(HMAC-SHA512(key=base64decode(secret), msg=uri_path + SHA256(nonce + post_data))),
as documented at https://docs.kraken.com/api/docs/guides/spot-rest-auth (the test suite
reproduces the worked example on that page byte for byte).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from ..rest import NonceSource

__all__ = ["NonceSource", "decode_secret", "sign"]


def decode_secret(secret: str) -> bytes:
    """The HMAC key from a base64 API secret.

    Raises ValueError without echoing the secret, so the message is safe to log.
    """
    try:
        key = base64.b64decode(secret.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the Kraken API secret is not valid base64") from None
    if not key:
        raise ValueError("the Kraken API secret is empty")
    return key


def sign(uri_path: str, nonce: int | str, post_data: str, secret: str | bytes) -> str:
    """API-Sign for one request.

    `uri_path` is the part starting with `/0/private/`, `post_data` the exact url-encoded body
    sent (it must contain the same nonce), `secret` the base64 secret or its decoded bytes.
    """
    key = secret if isinstance(secret, bytes) else decode_secret(secret)
    digest = hashlib.sha256(f"{nonce}{post_data}".encode()).digest()
    mac = hmac.new(key, uri_path.encode() + digest, hashlib.sha512)
    return base64.b64encode(mac.digest()).decode("ascii")
