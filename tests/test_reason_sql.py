"""The SQL classification of failure reasons gives ReasonClassifier's answer, on a real PostgreSQL."""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from exporter.config import Config
from exporter.signals.classify import ReasonClassifier
from exporter.signals.collectors.reason_sql import (
    PYTHON,
    ReasonSql,
    Untranslatable,
    parse,
    pattern_sql,
)
from exporter.signals.kraken.outcomes import OUTCOMES
from liquid_abt_drill.simulate.scenarios import BREAKER_OPEN, FAILURES
from tests.test_classify import TYPICAL

NON_ASCII = "octet_length(t) <> char_length(t)"
# The tests only evaluate expressions over literal texts: one connection for the module.
IN_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def db(pg_server_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_server_dsn)
    yield conn
    await conn.close()


LOWERED = ReasonSql.lowered("t")


def corpus() -> list[str]:
    """Kraken's error strings, the simulator's and the runbooks' texts, and variations on them."""
    base = [f.reason for f in FAILURES] + [BREAKER_OPEN.reason, *OUTCOMES]
    base += [text for texts in TYPICAL.values() for text in texts]
    base += [
        "EAPI:Rate limit exceeded", "EOrder:Rate limit exceeded", "EGeneral:Internal error",
        "EQuery:Unknown asset pair", "EGeneral:Invalid arguments", "HTTP 401", "status 4013",
        "x429y", "429", "(503)", "50", "timeout", "TIME OUT", "time_d-out", "timedout",
        "Rate_Limit", "ratelimit", "insufficient  funds", "INSUFFICIENT_BALANCE", "post only",
        "exchange api down", "exchange-unavailable", "api failure", "circuit_breaker", "DNS",
        "connection aborted", "ECONNREFUSED", "eai_again", "",
    ]  # fmt: skip
    rng = random.Random(12)
    varied = []
    for text in base:
        order = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(6))
        varied += [
            text.upper(),
            text.swapcase(),
            f"{text} (order O{order}-{rng.randint(1, 99999)}, {rng.randint(1, 30000)} ms)",
            f"{text}\nretry {rng.randint(1, 5)}",
            f"{text} café",  # non-ASCII: classified in Python
            f"{text}\u212a",  # KELVIN SIGN folds to k in Python
        ]
    return base + varied


async def classify_in_sql(db: asyncpg.Connection, sql: ReasonSql, texts: list[str]) -> list[str]:
    case = sql.case("t", LOWERED, NON_ASCII)
    rows = await db.fetch(
        f"SELECT {case} AS c FROM unnest($1::text[]) WITH ORDINALITY AS u(t, i) ORDER BY i", texts
    )
    return [row["c"] for row in rows]


@IN_MODULE_LOOP
async def test_default_patterns_classify_as_the_python_classifier(db: asyncpg.Connection) -> None:
    patterns = Config().purchases.failure_reasons
    python = ReasonClassifier(patterns).classify
    texts = corpus()
    found = await classify_in_sql(db, ReasonSql(patterns), texts)
    for text, sql_class in zip(texts, found, strict=True):
        if text.isascii():
            assert sql_class == python(text), f"{text!r}: SQL {sql_class}, Python {python(text)}"
        else:
            assert sql_class == PYTHON, f"{text!r} is not ASCII: Python decides"
    assert {c for c in found if c != PYTHON} >= set(patterns) | {"other"}


# Each construct of the translated subset, with texts on both sides of it.
PATTERNS = [
    r"\b40[13]\b", r"time[\s_-]*d?[\s_-]*out", r"a$", r"^x", r"[^a-c]z", r"\W+q", r"[\W]",
    r"x{2,3}y", r"a|", r"()", r"[]a]", r"[a-]", r"\.\*", r"\x41", r"[Z-a]", r"\d\D", r"\s\S",
    r"\w\b", r"\Bb", r"\Ax", r"y\Z", r"a.b", r"[\b]", r"{", r"a{,2}b", r"x{}", r"(?P<n>ab)+c",
    r"[^\n]", r"q*", r"'", r"\\", r"[\\\]]", r"it's", r"a{0}b", r"(a|bc){2}d", r"[^\x01-\x7f]",
]  # fmt: skip
TEXTS = [
    "x", "a", "a\n", "A", "abz", "ABZ", "dz", "\nz", "401", "x401y", "a 403 b", "Timed Out",
    "time-d_out", "TIMEOUT", "a\nb", "axb", "q", " q", "!q", "xxy", "XXXY", "xy", "b", "ab",
    "abc", "ABABC", "]", "-", ".*", "A.*", "[", "`", "^", "_", "1x", "x\n", "y", "y\n", "{",
    "x{}", "aab", "b\x08", "\x08", "'", "\\", "x\x1cq", "\x0bq", "ZZ", "\x7f", "IT'S", "bcbcd",
]  # fmt: skip


async def matches(db: asyncpg.Connection, pattern: str, texts: list[str]) -> list[bool]:
    expr = pattern_sql(parse(pattern), LOWERED)
    rows = await db.fetch(
        f"SELECT {expr} AS m FROM unnest($1::text[]) WITH ORDINALITY AS u(t, i) ORDER BY i", texts
    )
    return [row["m"] for row in rows]


@IN_MODULE_LOOP
@pytest.mark.parametrize("pattern", PATTERNS)
async def test_each_construct_matches_what_python_matches(
    db: asyncpg.Connection, pattern: str
) -> None:
    found = await matches(db, pattern, TEXTS)
    for text, match in zip(TEXTS, found, strict=True):
        assert match == bool(re.search(pattern, text, re.IGNORECASE)), f"{pattern!r} on {text!r}"


def random_pattern(rng: random.Random, depth: int = 0) -> str:
    atoms = ["a", "B", "1", " ", "_", "-", r"\d", r"\w", r"\s", r"\W", r"\S", r"\D", ".", "[a-c]",
             "[^b]", "[A-Z]", r"[\s_-]", r"\b", r"\B", "^", "$", r"\.", "[^\\n]", "x", "\\n"]  # fmt: skip
    counts = ["", "", "", "*", "+", "?", "{2}", "{1,3}", "{,2}", "*?", "{0,}"]
    out = []
    for _ in range(rng.randint(1, 4)):
        if depth < 2 and rng.random() < 0.2:
            options = (random_pattern(rng, depth + 1) for _ in range(rng.randint(1, 3)))
            atom = "(" + "|".join(options) + ")"
        else:
            atom = rng.choice(atoms)
        zero_width = atom in (r"\b", r"\B", "^", "$")
        out.append(atom + ("" if zero_width else rng.choice(counts)))
    return "".join(out)


@IN_MODULE_LOOP
async def test_random_patterns_match_what_python_matches(db: asyncpg.Connection) -> None:
    rng = random.Random(7)
    # Python's \B never matches an empty text; classification never sees one (it is `other`).
    texts = ["".join(rng.choice("aAbB1 _-x\n.cZ") for _ in range(rng.randint(1, 10)))]
    texts += ["".join(rng.choice("aAbB1 _-x\n.cZ") for _ in range(rng.randint(1, 10))) for _ in range(150)]  # fmt: skip
    checked = 0
    while checked < 120:
        pattern = random_pattern(rng)
        try:
            parse(pattern)
        except (Untranslatable, re.error):
            continue
        checked += 1
        found = await matches(db, pattern, texts)
        for text, match in zip(texts, found, strict=True):
            expected = bool(re.search(pattern, text, re.IGNORECASE))
            assert match == expected, f"{pattern!r} on {text!r}"


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("(?=x)y", "group '(?=x'"), (r"(a)\1", r"escape \1"), ("(?i)x", "group '(?i)'"),
        ("café", "non-ASCII"), ("a*+", "possessive"), ("x{300}", "repetition"),
    ],
)  # fmt: skip
def test_what_is_not_translated_says_why(pattern: str, reason: str) -> None:
    with pytest.raises(Untranslatable, match=re.escape(reason)):
        parse(pattern)
    sql = ReasonSql({"auth": ["forbidden"], "maintenance": [pattern]})
    assert sql.untranslatable is not None and repr(pattern) in str(sql.untranslatable)
