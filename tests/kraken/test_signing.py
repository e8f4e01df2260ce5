"""API-Sign must match Kraken byte for byte: a wrong signature looks exactly like a wrong key."""

from __future__ import annotations

import base64

import pytest

from exporter.signals.kraken.signing import NonceSource, decode_secret, sign

# The worked example of https://docs.kraken.com/api/docs/guides/spot-rest-auth (a published
# sample key, not a credential).
DOC_SECRET = (
    "kQH5HW/8p1uGOVjbgWA7FunAmGO8lsSUXNsu3eow76sz84Q18fWxnyRzBHCd3pd5nE9qa99HAZtuZuj6F1huXg=="
)
DOC_NONCE = "1616492376594"
DOC_PAYLOAD = "nonce=1616492376594&ordertype=limit&pair=XBTUSD&price=37500&type=buy&volume=1.25"
DOC_PATH = "/0/private/AddOrder"
DOC_SIGNATURE = (
    "4/dpxb3iT4tp/ZCVEwSnEsLxx0bqyhLpdfOpc6fn7OR8+UClSV5n9E6aSS8MPtnRfp32bAb0nmbRn6H8ndwLUQ=="
)


def test_reproduces_krakens_documented_example() -> None:
    assert sign(DOC_PATH, DOC_NONCE, DOC_PAYLOAD, DOC_SECRET) == DOC_SIGNATURE


def test_accepts_an_integer_nonce_and_a_decoded_key() -> None:
    key = base64.b64decode(DOC_SECRET)
    assert sign(DOC_PATH, int(DOC_NONCE), DOC_PAYLOAD, key) == DOC_SIGNATURE


def test_signature_covers_path_nonce_and_body() -> None:
    changed = [
        sign("/0/private/Balance", DOC_NONCE, DOC_PAYLOAD, DOC_SECRET),
        sign(DOC_PATH, "1616492376595", DOC_PAYLOAD, DOC_SECRET),
        sign(DOC_PATH, DOC_NONCE, DOC_PAYLOAD.replace("1.25", "1.26"), DOC_SECRET),
    ]
    assert DOC_SIGNATURE not in changed


@pytest.mark.parametrize("secret", ["not base64!", "", "abc"])
def test_invalid_secret_is_rejected_without_echoing_it(secret: str) -> None:
    with pytest.raises(ValueError) as info:
        decode_secret(secret)
    assert secret == "" or secret not in str(info.value)


def test_nonces_strictly_increase_even_when_the_clock_stands_still_or_goes_back() -> None:
    times = iter([1000.0, 1000.0, 1000.0, 999.0, 1001.0])
    nonce = NonceSource(clock=lambda: next(times))
    values = [nonce() for _ in range(5)]
    assert values == [1_000_000, 1_000_001, 1_000_002, 1_000_003, 1_001_000]
