"""Failure reasons are classified into the closed set of the runbook scenarios."""

import pytest

from exporter.config import Config
from exporter.labels import REASON_CLASSES
from exporter.signals.classify import ReasonClassifier

TYPICAL = {
    "exchange_unavailable": [
        "EService:Unavailable",
        "EService:Busy",
        "Kraken API error: 503 Service Unavailable",
        "502 Bad Gateway",
        "Circuit breaker is OPEN for kraken",
        "exchange_unavailable",
        # Seen classified as `other` before (issue 10, case 12).
        "Kraken API unavailable",
        "EGeneral:Internal error",
        "500 Internal Server Error",
    ],
    "rate_limited": [
        "EAPI:Rate limit exceeded",
        "EGeneral:Too many requests",
        "HTTP 429",
        "rate_limited",
    ],
    "auth": [
        "EAPI:Invalid signature",
        "EAPI:Invalid key",
        "EAPI:Invalid nonce",
        "EGeneral:Permission denied",
        "EGeneral:Temporary lockout",
        "Request failed with status code 401",
        "403 Forbidden",
    ],
    "network_timeout": [
        "Request timed out after 30000ms",
        "ETIMEDOUT",
        "connect ECONNREFUSED 1.2.3.4:443",
        "getaddrinfo ENOTFOUND api.kraken.com",
        "socket hang up",
        "EService:Deadline elapsed",
        "network_timeout",
        "Kraken API unavailable: ServerDisconnectedError",
        "Cannot connect to host api.kraken.com:443 ssl:default [Connection refused]",
        "ClientConnectorError: Temporary failure in name resolution",
    ],
    "insufficient_funds": [
        "EOrder:Insufficient funds",
        "insufficient_funds",
        "Insufficient funds in account",
    ],
    "invalid_amount": [
        "invalid_amount",
        "EGeneral:Invalid arguments:volume",
        "EOrder:Order minimum not met",
    ],
    "maintenance": [
        "Kraken is under maintenance",
        "EService:Market in cancel_only mode",
        "post_only",
    ],
}


@pytest.fixture
def classifier() -> ReasonClassifier:
    return ReasonClassifier(Config().purchases.failure_reasons)


@pytest.mark.parametrize(
    ("expected", "text"), [(cls, text) for cls, texts in TYPICAL.items() for text in texts]
)
def test_typical_texts_get_their_class(
    classifier: ReasonClassifier, expected: str, text: str
) -> None:
    assert classifier.classify(text) == expected


@pytest.mark.parametrize(
    "text", ["", None, "something nobody expected", "Unknown error ☃", "x" * 10000]
)
def test_unknown_text_is_other(classifier: ReasonClassifier, text: str | None) -> None:
    assert classifier.classify(text) == "other"


def test_every_class_of_the_closed_set_has_default_patterns() -> None:
    configured = set(Config().purchases.failure_reasons)
    assert configured | {"other"} == set(REASON_CLASSES)


def test_configured_patterns_replace_the_defaults() -> None:
    classifier = ReasonClassifier({"maintenance": [r"scheduled downtime"]})
    assert classifier.classify("Scheduled downtime until 04:00") == "maintenance"
    assert classifier.classify("EService:Unavailable") == "other"


def test_classification_never_leaves_the_closed_set(classifier: ReasonClassifier) -> None:
    texts = [t for ts in TYPICAL.values() for t in ts] + ["random", "429 maintenance funds"]
    assert {classifier.classify(t) for t in texts} <= set(REASON_CLASSES)
