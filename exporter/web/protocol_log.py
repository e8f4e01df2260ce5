"""Malformed HTTP requests are logged as one line that quotes nothing the client sent.

aiohttp answers a request it cannot parse (a NUL byte in a header, a bad request line, a header
too long) with 400 and logs the parser's exception with a traceback on the `aiohttp.server`
logger. The exception's message quotes the offending raw line, so a broken `Authorization:
Bearer ...` header would put the token in the log, and any client could fill the log with
tracebacks. A filter on that logger (it sees every record at the source, whatever handlers the
process configures) turns such records into one warning with the client address and the kind of
error; the client still gets aiohttp's 400.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

SERVER_LOGGER = "aiohttp.server"


class MalformedRequestFilter(logging.Filter):
    """Rewrites records about unparsable requests; lets every other record through unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        # aiohttp's message is "Error handling request from %s" with the peer address.
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
        record.msg = "malformed HTTP request refused with 400"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        record.remote = str(remote)
        record.error = type(exc).__name__
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_malformed_requests() -> None:
    """Install the filter once on aiohttp's server logger (idempotent)."""
    logger = logging.getLogger(SERVER_LOGGER)
    if not any(isinstance(f, MalformedRequestFilter) for f in logger.filters):
        logger.addFilter(MalformedRequestFilter())
