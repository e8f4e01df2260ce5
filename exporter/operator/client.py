"""The admin API over HTTP, for the operator CLI: one request per call, JSON in and out, and every
failure as an AdminError whose message is one line an operator can act on."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from exporter.secrets import read_secret

TOKEN_ENV = "LIQUID_ABT_ADMIN_TOKEN"
URL_ENV = "LIQUID_ABT_EXPORTER_URL"
DEFAULT_URL = "http://127.0.0.1:9898"
TOKEN_HINT = f"{TOKEN_ENV} or {TOKEN_ENV}_FILE"
CA_FILE_ENV = "LIQUID_ABT_EXPORTER_CA_FILE"


class AdminError(Exception):
    """A call that did not succeed; the message says why in one line."""


class AdminTimeout(AdminError):
    """No answer in time: the call may still have been carried out."""


def admin_token() -> str:
    token = read_secret(TOKEN_ENV)
    if not token:
        raise AdminError(f"no admin token: set {TOKEN_HINT} (the exporter's admin token)")
    return token


def tls_context(
    ca_file: str | None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext | None:
    """What an https:// exporter needs: a private CA to trust, a client certificate when its web
    config asks for one. None: the system's trust store and no client certificate."""
    if ca_file is None and cert_file is None:
        return None
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file is not None:
            context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        name = ca_file if cert_file is None else f"{cert_file} / {key_file or cert_file}"
        raise AdminError(f"cannot load the TLS files {name}: {exc}") from None
    return context


class AdminClient:
    def __init__(
        self, url: str, token: str, timeout: float, context: ssl.SSLContext | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._context = context

    def get(self, path: str, **params: Any) -> Any:
        given = {k: str(v) for k, v in params.items() if v is not None}
        query = f"?{urllib.parse.urlencode(given)}" if given else ""
        return self._call("GET", f"{path}{query}")

    def get_text(self, path: str, **params: Any) -> str:
        """A text answer (an incident review's Markdown); its failures are JSON like the rest."""
        given = {k: str(v) for k, v in params.items() if v is not None}
        query = f"?{urllib.parse.urlencode(given)}" if given else ""
        return str(self._call("GET", f"{path}{query}", accept="text/markdown"))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._call("POST", path, body)

    def patch(self, path: str, body: dict[str, Any]) -> Any:
        return self._call("PATCH", path, body)

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None,
        accept: str = "application/json",
    ) -> Any:  # fmt: skip
        request = urllib.request.Request(
            f"{self.url}/api/admin/{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json",
                     "Accept": accept},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(
                request, timeout=self._timeout, context=self._context
            ) as response:
                raw = response.read()
                return json.loads(raw) if accept == "application/json" else raw.decode()
        except urllib.error.HTTPError as error:
            raise AdminError(self._refusal(error.code, error.read())) from None
        except TimeoutError:
            raise AdminTimeout(self._too_slow()) from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError):
                raise AdminTimeout(self._too_slow()) from None
            if isinstance(error.reason, ssl.SSLCertVerificationError):
                raise AdminError(self._untrusted(error.reason)) from None
            raise AdminError(self._unreachable(error.reason)) from None
        except (OSError, ValueError) as error:  # ValueError: not JSON, not UTF-8
            raise AdminError(f"{self.url}: no admin API answer: {error}") from None

    def _too_slow(self) -> str:
        return f"the exporter at {self.url} did not answer within {self._timeout:g}s"

    def _untrusted(self, reason: ssl.SSLCertVerificationError) -> str:
        return (
            f"the exporter at {self.url} presented a certificate this machine does not trust: "
            f"{reason.verify_message} (give its CA with --exporter.ca-file or {CA_FILE_ENV})"
        )

    def _unreachable(self, reason: object) -> str:
        why = getattr(reason, "strerror", None) or str(reason)
        return (
            f"cannot reach the exporter at {self.url}: {why.lower()} "
            f"(is it running? set --exporter.url or {URL_ENV})"
        )

    def _refusal(self, status: int, raw: bytes) -> str:
        try:
            message = str(json.loads(raw)["error"])
        except (ValueError, KeyError, TypeError):
            return f"{self.url} answered {status} without the admin API's JSON: is this a liquid-abt-exporter?"
        if status == 401:
            return f"the exporter refused the admin token (401): check {TOKEN_HINT}"
        if status == 403:
            return f"the exporter's admin API is off (403): {message}"
        if status == 503:
            return f"the exporter cannot do it now (503): {message}"
        return f"{message} ({status})"
