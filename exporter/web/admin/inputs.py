"""Reading admin requests: JSON bodies and query parameters as pydantic models, one rule per kind
of value (text, whole number, choice, time), one error format.

Every model forbids unknown names and spells its fields in camelCase (the runbook's style:
failureThreshold, estimatedDuration, affectedExchange), so the whole admin API speaks one style.
Whatever is wrong with a request becomes a 400 (413 for a body over MAX_BODY_BYTES) whose JSON
names the field and the problem, before anything reaches the database.
"""

from __future__ import annotations

import json
import re
import reprlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Final, TypeVar

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError, ValidationInfo
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from exporter.web.admin.common import bad_request, json_error, not_found
from exporter.web.keys import CONFIG

MAX_TEXT: Final = 500
MAX_BODY_BYTES: Final = 64 * 1024  # an admin body is a few fields; anything larger is a mistake
INT4_MAX: Final = 2**31 - 1  # PostgreSQL `integer` columns
BIGINT_MAX: Final = 2**63 - 1  # `bigint` / `bigserial`
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
QUERY: Final = "query"  # validation context: the values are query-string text

_DIGITS = re.compile(r"[0-9]{1,19}")  # 19 digits hold any bigint; more is out of range anyway
_SHOWN = reprlib.Repr()  # keyword arguments only from Python 3.12
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlevel = 60, 60, 2
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = 4
_MAX_NAMES_SHOWN = 5

M = TypeVar("M", bound=BaseModel)


class Model(BaseModel):
    """A request body or query: unknown names refused, camelCase names, read-only."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=False, frozen=True
    )


def shown(value: object) -> str:
    """A short, safe repr for error messages: long, deep or huge values are cut."""
    return _SHOWN.repr(value)


def named(name: str) -> str:
    """A name as given, or its short repr when it is long or holds unprintable characters."""
    return name if name.isprintable() and len(name) <= 60 else shown(name)


def invalid(message: str) -> PydanticCustomError:
    """The error a rule raises: `message` becomes the text after the field's name."""
    return PydanticCustomError("invalid", message)


# ---- value rules: each takes (value, info) and returns the clean value or raises ----

Rule = Callable[[Any, ValidationInfo], Any]


def text_rule(value: object, info: ValidationInfo | None = None) -> str:
    """A non-empty string (trimmed) of at most MAX_TEXT characters that PostgreSQL can store."""
    if not isinstance(value, str):
        raise invalid(f"expected a string, got {shown(value)}")
    value = value.strip()
    if not value:
        raise invalid("expected a non-empty string")
    if len(value) > MAX_TEXT:
        raise invalid(f"expected at most {MAX_TEXT} characters, got {len(value)}")
    # PostgreSQL text takes neither NUL nor lone surrogates (which JSON can spell as \ud800).
    if "\x00" in value:
        raise invalid("must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid("must be valid Unicode (it holds a lone surrogate)") from None
    return value


def whole_rule(low: int, high: int, unit: str = "") -> Rule:
    """A whole number in [low, high]: a JSON integer in a body (not "3", not 3.0, not true),
    decimal digits in a query string. The one integer rule of the admin API."""
    expected = f"expected a whole number from {low} to {high}{unit}"

    def check(value: object, info: ValidationInfo) -> int:
        if info.context == QUERY and isinstance(value, str) and _DIGITS.fullmatch(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise invalid(f"{expected}, got {shown(value)}")
        return value

    return check


def choice_rule(allowed: Sequence[str]) -> Rule:
    """One of `allowed`, spelled exactly."""

    def check(value: object, info: ValidationInfo) -> str:
        if value not in allowed:
            raise invalid(f"expected one of {', '.join(allowed)}, got {shown(value)}")
        return str(value)

    return check


def time_rule(value: object, info: ValidationInfo | None = None) -> datetime:
    """An ISO 8601 time with its offset, as UTC."""
    if not isinstance(value, str):
        raise invalid(f"expected an ISO 8601 time, got {shown(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise invalid(f"not an ISO 8601 time: {shown(value)}") from None
    if parsed.tzinfo is None:
        # A time without an offset is ambiguous across the team's time zones: refuse to guess.
        raise invalid(f"add a time zone offset (Z or +10:00) to {shown(value)}")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+14:00 falls in year 0 in UTC
        raise invalid(
            f"out of range: {shown(value)} is not between years 1 and 9999 in UTC"
        ) from None


def optional(rule: Rule) -> Rule:
    """The rule, or None when the value is absent or null."""

    def check(value: object, info: ValidationInfo) -> Any:
        return None if value is None else rule(value, info)

    return check


Text = Annotated[str, PlainValidator(text_rule)]
OptionalText = Annotated[str | None, PlainValidator(optional(text_rule))]
Time = Annotated[datetime, PlainValidator(time_rule)]
Limit = Annotated[int, PlainValidator(whole_rule(1, MAX_LIMIT))]
Offset = Annotated[int, PlainValidator(whole_rule(0, BIGINT_MAX))]


# ---- reading a request ----


async def body(request: web.Request, model: type[M]) -> M:
    """The JSON body as `model`; no body at all reads as `{}`."""
    raw = await _read(request)
    data: object = {}
    if raw.strip():
        try:
            data = json.loads(raw)
        except RecursionError:
            raise bad_request("body is not valid JSON: nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError, bad UTF-8, an integer of > 4300 digits
            raise bad_request(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad_request(f"body must be a JSON object, got {type(data).__name__}")
    return validate(model, data)


async def _read(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _too_large()
    try:
        raw = await request.content.read(MAX_BODY_BYTES + 1)
    except RequestPayloadError as exc:  # a corrupt gzip body, a broken chunked encoding
        raise bad_request(f"body cannot be read: {str(exc).splitlines()[-1].strip()}") from None
    if len(raw) > MAX_BODY_BYTES:
        raise _too_large()
    return raw


def _too_large() -> web.HTTPException:
    response = json_error(413, f"body too large: an admin body is at most {MAX_BODY_BYTES} bytes")
    return web.HTTPRequestEntityTooLarge(
        max_size=MAX_BODY_BYTES, actual_size=0, text=response.text, content_type="application/json"
    )


def query(request: web.Request, model: type[M]) -> M:
    """The query string as `model`; an empty value is the same as no value."""
    values: dict[str, str] = {}
    for name in request.query:
        given = request.query.getall(name)
        if len(given) > 1:
            raise bad_request(f"{named(name)}: given {len(given)} times, give it once")
        if given[0] != "":
            values[name] = given[0]
    return validate(model, values, context=QUERY)


def validate(model: type[M], data: dict[str, Any], context: str | None = None) -> M:
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise bad_request(
            explain(model, exc, "parameter" if context == QUERY else "field")
        ) from None


def explain(model: type[BaseModel], error: ValidationError, noun: str = "field") -> str:
    """One line naming each problem: `name: what is wrong`; unknown names together."""
    unknown = [str(e["loc"][0]) for e in error.errors() if e["type"] == "extra_forbidden"]
    problems = [_problem(model, e) for e in error.errors() if e["type"] != "extra_forbidden"]
    if unknown:
        names = ", ".join(named(n) for n in unknown[:_MAX_NAMES_SHOWN])
        more = (
            f" and {len(unknown) - _MAX_NAMES_SHOWN} more"
            if len(unknown) > _MAX_NAMES_SHOWN
            else ""
        )
        allowed = ", ".join(sorted(f.alias or n for n, f in model.model_fields.items()))
        problems.append(f"unknown {noun}(s) {names}{more}: allowed are {allowed or 'none'}")
    return "; ".join(problems)


def _problem(model: type[BaseModel], error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "missing":
        field = next((f for f in model.model_fields.values() if f.alias == where), None)
        hint = f", {field.description}" if field is not None and field.description else ""
        return f"{where}: required{hint}"
    return f"{where}: {error['msg']}" if where else str(error["msg"])


# ---- the bodies and queries several routes share ----


class Paging(Model):
    """`limit` entries from `offset`."""

    limit: Limit = DEFAULT_LIMIT
    offset: Offset = 0


class NoQuery(Model):
    """For routes that take no query parameters: any given is a mistake worth saying."""


def page(entries: list[dict[str, Any]], total: int, paging: Paging) -> dict[str, Any]:
    """The one shape of a paged answer: the entries, how many match in all, where the next
    page starts (None on the last one)."""
    following = paging.offset + len(entries)
    return {
        "entries": entries,
        "total": total,
        "limit": paging.limit,
        "offset": paging.offset,
        "nextOffset": following if following < total else None,
    }


def known_exchange(request: web.Request, name: str) -> str:
    """`name` if it is a configured exchange, else a 404 that lists them."""
    configured = request.config_dict[CONFIG].exchanges
    if name not in configured:
        raise not_found(f"unknown exchange {shown(name)}: configured are {', '.join(configured)}")
    return name
