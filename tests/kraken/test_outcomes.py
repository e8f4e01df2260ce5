"""The classification table: Kraken error strings, HTTP statuses and transport failures."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from exporter.signals.kraken.outcomes import OUTCOMES, Outcome, classify

ERRORS = [
    ("EAPI:Rate limit exceeded", Outcome.RATE_LIMITED),
    ("EGeneral:Too many requests", Outcome.RATE_LIMITED),
    ("EOrder:Rate limit exceeded", Outcome.RATE_LIMITED),
    ("EAPI:Invalid signature", Outcome.AUTH_ERROR),
    ("EAPI:Invalid key", Outcome.AUTH_ERROR),
    # Replicas sharing a key, or a clock gone back: configuration, not credentials.
    ("EAPI:Invalid nonce", Outcome.INVALID_NONCE),
    ("EAPI:Invalid nonce:detail", Outcome.INVALID_NONCE),
    ("EGeneral:Temporary lockout", Outcome.AUTH_ERROR),
    ("EGeneral:Permission denied", Outcome.AUTH_ERROR),
    ("EService:Unavailable", Outcome.SERVICE_UNAVAILABLE),
    ("EService:Busy", Outcome.SERVICE_UNAVAILABLE),
    ("EService:Market in cancel_only mode", Outcome.SERVICE_UNAVAILABLE),
    ("EService:Market in post_only mode", Outcome.SERVICE_UNAVAILABLE),
    ("EService:Deadline elapsed", Outcome.TIMEOUT),
    ("EGeneral:Internal error", Outcome.SERVER_ERROR),
    ("EGeneral:Internal error:1234", Outcome.SERVER_ERROR),
    # The API worked; a retry cannot help; purchases classify it as insufficient_funds.
    ("EOrder:Insufficient funds", Outcome.API_ERROR),
    ("EQuery:Unknown asset pair", Outcome.API_ERROR),
    ("EGeneral:Invalid arguments", Outcome.API_ERROR),
    ("EGeneral:Invalid arguments:Index unavailable", Outcome.API_ERROR),
]


def test_outcome_set_is_the_metric_contract() -> None:
    assert OUTCOMES == (
        "success", "timeout", "network_error", "rate_limited",
        "auth_error", "invalid_nonce", "service_unavailable", "server_error", "api_error",
    )  # fmt: skip


@pytest.mark.parametrize(("error", "expected"), ERRORS)
def test_kraken_error_strings(error: str, expected: Outcome) -> None:
    assert classify(status=200, errors=[error]) is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (429, Outcome.RATE_LIMITED),
        (401, Outcome.AUTH_ERROR),
        (403, Outcome.AUTH_ERROR),
        (503, Outcome.SERVICE_UNAVAILABLE),
        (500, Outcome.SERVER_ERROR),
        (502, Outcome.SERVER_ERROR),
        (504, Outcome.SERVER_ERROR),
        (520, Outcome.SERVER_ERROR),
        (404, Outcome.API_ERROR),
        (400, Outcome.API_ERROR),
    ],
)
def test_http_status_with_an_unparsable_body(status: int, expected: Outcome) -> None:
    assert classify(status=status, errors=None) is expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TimeoutError(), Outcome.TIMEOUT),
        (aiohttp.ServerTimeoutError("read timeout"), Outcome.TIMEOUT),
        (aiohttp.ConnectionTimeoutError("connect timeout"), Outcome.TIMEOUT),
        (ConnectionRefusedError(111, "Connection refused"), Outcome.NETWORK_ERROR),
        (ConnectionResetError(104, "Connection reset by peer"), Outcome.NETWORK_ERROR),
        (socket.gaierror(-2, "Name or service not known"), Outcome.NETWORK_ERROR),
        (aiohttp.ServerDisconnectedError(), Outcome.NETWORK_ERROR),
        (aiohttp.ClientPayloadError("cut off"), Outcome.NETWORK_ERROR),
        (RuntimeError("bug"), Outcome.API_ERROR),
    ],
)
def test_transport_exceptions(exc: BaseException, expected: Outcome) -> None:
    assert classify(exc=exc) is expected


def test_success_needs_a_2xx_kraken_reply_without_errors() -> None:
    assert classify(status=200, errors=[]) is Outcome.SUCCESS
    assert classify(status=200, errors=None) is Outcome.API_ERROR  # not JSON


def test_warnings_are_not_failures() -> None:
    assert classify(status=200, errors=["WGeneral:Deprecated"]) is Outcome.SUCCESS


def test_a_specific_error_beats_a_generic_one_and_the_status() -> None:
    errors = ["EGeneral:Invalid arguments", "EAPI:Rate limit exceeded"]
    assert classify(status=200, errors=errors) is Outcome.RATE_LIMITED
    assert classify(status=502, errors=["EService:Unavailable"]) is Outcome.SERVICE_UNAVAILABLE


def test_the_status_beats_a_generic_body_error() -> None:
    assert classify(status=429, errors=["EGeneral:Unknown method"]) is Outcome.RATE_LIMITED
    assert classify(status=500, errors=[]) is Outcome.SERVER_ERROR
