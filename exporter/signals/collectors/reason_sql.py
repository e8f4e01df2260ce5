"""Failure-reason classification inside the purchases query: the cost follows purchases, not texts.

ReasonClassifier (signals/classify.py) matches Python regular expressions case-insensitively,
first class wins. Grouping by the raw text and classifying in Python costs one row and one regex
run per distinct text, and during an outage every failed purchase may carry its own text (order
ids, timings). PostgreSQL's own regex engine is no way out on its own: `~*` with the default
patterns costs about 70 us a row. So each pattern is compiled for the lowered text
`lower(failure_reason COLLATE "C")` (ASCII letters lowered):

- a pattern whose language is a short list of strings (most of them) becomes `strpos` tests;
- any other becomes a PostgreSQL regex (`~`), guarded by `strpos` tests of the literals every
  match must contain, so the regex runs only on the rows that may match.

For ASCII texts the result equals ReasonClassifier's (tests compare both on a corpus against a real
PostgreSQL). Python and the database's locale disagree on Unicode case folding and character
classes, so texts with other characters get the class `PYTHON` and are classified by
ReasonClassifier; so are all texts when a pattern uses syntax outside the subset handled here
(lookarounds, back references, inline flags, non-ASCII): `Untranslatable` says which.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from itertools import product

# Marks the rows ReasonClassifier must classify (never a label: the collector replaces it).
PYTHON = "<python>"

# The characters a lowered ASCII text can hold: no upper-case letters, no NUL (PostgreSQL text).
ALPHABET = frozenset(chr(c) for c in range(1, 128)) - set(string.ascii_uppercase)
ASCII = frozenset(chr(c) for c in range(1, 128))
# What Python's `\d`, `\w` and `\s` match in ASCII.
_SETS = {
    "d": frozenset(string.digits),
    "w": frozenset(string.ascii_letters + string.digits + "_"),
    "s": frozenset(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"),
}
_CONTROLS = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a"}
_BOUND = re.compile(r"\{(\d*)(?:(,)(\d*))?\}")
_MAX_STRINGS = 16  # beyond this a literal list costs more than the regex it replaces
_MAX_REPEAT = 255  # PostgreSQL's limit for a bound


class Untranslatable(ValueError):
    """A pattern uses syntax this module does not translate; the message says which."""


@dataclass(frozen=True)
class Chars:
    chars: frozenset[str]


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Alt:
    options: tuple[Node, ...]


@dataclass(frozen=True)
class Repeat:
    item: Node
    low: int
    high: int | None


@dataclass(frozen=True)
class Assert:
    """Zero-width: ^, $, \\b, \\B, \\A, \\Z, already written as PostgreSQL regex."""

    are: str


Node = Chars | Seq | Alt | Repeat | Assert


def _fold(chars: set[str] | frozenset[str]) -> frozenset[str]:
    """What a case-insensitive set matches, as seen in the lowered text."""
    return frozenset(c.lower() for c in chars) & ALPHABET


class _Parser:
    """Python `re` syntax, the subset below, into a Node tree for the lowered text."""

    def __init__(self, pattern: str) -> None:
        self.p, self.i = pattern, 0

    def fail(self, what: str) -> Untranslatable:
        return Untranslatable(f"{what} at position {self.i} of {self.p!r}")

    def peek(self, ahead: int = 0) -> str:
        j = self.i + ahead
        return self.p[j] if j < len(self.p) else ""

    def next(self) -> str:
        c = self.peek()
        if not c:
            raise self.fail("unexpected end")
        self.i += 1
        return c

    def parse(self) -> Node:
        node = self.alternation()
        if self.i != len(self.p):
            raise self.fail("unbalanced parenthesis")
        return node

    def alternation(self) -> Node:
        options = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            options.append(self.sequence())
        return options[0] if len(options) == 1 else Alt(tuple(options))

    def sequence(self) -> Node:
        items: list[Node] = []
        while self.peek() and self.peek() not in "|)":
            items.append(self.quantified(self.atom()))
        return items[0] if len(items) == 1 else Seq(tuple(items))

    def atom(self) -> Node:
        c = self.next()
        if c == "(":
            return self.group()
        if c == "[":
            return Chars(self.char_class())
        if c == "\\":
            return self.escape()
        if c == ".":
            return Chars(ALPHABET - {"\n"})
        if c == "^":
            return Assert("^")
        if c == "$":  # Python's `$` also matches before a final newline
            return Assert("(?=\\u000a?$)")
        if c in "*+?" or (c == "{" and self.bound(self.i - 1)):
            raise self.fail("nothing to repeat")
        return Chars(_fold({self.ascii(c)}))

    def ascii(self, c: str) -> str:
        if not c.isascii():
            raise self.fail(f"non-ASCII character {c!r}")
        return c

    def bound(self, at: int) -> tuple[int, int | None, int] | None:
        """A `{m,n}` quantifier at `at` as (low, high, end); None where Python reads a literal."""
        m = _BOUND.match(self.p, at)
        if m is None or m.group(0) == "{}":
            return None
        low = int(m.group(1)) if m.group(1) else 0
        high_text = m.group(3) if m.group(2) else m.group(1)
        return low, (int(high_text) if high_text else None), m.end()

    def quantified(self, atom: Node) -> Node:
        c = self.peek()
        if c in ("*", "+", "?"):
            self.i += 1
            low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
        elif c == "{" and (found := self.bound(self.i)) is not None:
            low, high, self.i = found
        else:
            return atom
        if self.peek() == "+":
            raise self.fail("possessive quantifier")
        if self.peek() == "?":  # lazy: the same texts match
            self.i += 1
        if isinstance(atom, Assert) or max(low, high or 0) > _MAX_REPEAT:
            raise self.fail("unsupported repetition")
        return Repeat(atom, low, high)

    def group(self) -> Node:
        if self.p.startswith("?:", self.i):
            self.i += 2
        elif self.p.startswith("?P<", self.i):
            self.i = self.p.index(">", self.i) + 1
        elif self.peek() == "?":
            raise self.fail(f"group {self.p[self.i - 1 : self.i + 3]!r}")
        node = self.alternation()
        if self.next() != ")":
            raise self.fail("unbalanced parenthesis")
        return node

    def escape(self) -> Node:
        c = self.next()
        if c.lower() in _SETS:
            chars = _fold(_SETS[c.lower()])
            return Chars(ALPHABET - chars if c.isupper() else chars)
        asserts = {"b": "\\y", "B": "\\Y", "A": "^", "Z": "$"}
        if c in asserts:
            return Assert(asserts[c])
        return Chars(_fold({self.char_escape(c)}))

    def char_escape(self, c: str) -> str:
        if c in _CONTROLS:
            return _CONTROLS[c]
        if c == "x":
            digits = self.p[self.i : self.i + 2]
            self.i += 2
            value = int(digits, 16)
            if not 0 < value < 128:
                raise self.fail(f"escape \\x{digits}")
            return chr(value)
        if c.isascii() and not c.isalnum():
            return c
        raise self.fail(f"escape \\{c}")

    def char_class(self) -> frozenset[str]:
        negated = self.peek() == "^"
        self.i += negated
        chars: set[str] = set()
        first = True
        while (c := self.next()) != "]" or first:
            first = False
            if c == "\\" and self.peek().lower() in _SETS:
                e = self.next()
                found = _SETS[e.lower()]
                chars |= (ASCII - found) if e.isupper() else found
                continue
            low = self.class_char(c)
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                self.i += 1
                high = self.class_char(self.next())
                chars |= {chr(x) for x in range(ord(low), ord(high) + 1)}
            else:
                chars.add(low)
        folded = _fold(chars)
        return ALPHABET - folded if negated else folded

    def class_char(self, c: str) -> str:
        if c != "\\":
            return self.ascii(c)
        e = self.next()
        return "\b" if e == "b" else self.char_escape(e)


def parse(pattern: str) -> Node:
    """The pattern as matched case-insensitively, for a lowered ASCII text."""
    re.compile(pattern)  # Python's own errors first: the subset below assumes valid syntax
    return _Parser(pattern).parse()


# --- PostgreSQL regex (ARE) -------------------------------------------------------------------


def _char(c: str) -> str:
    return c if c.isalnum() else f"\\u{ord(c):04x}"


def _ranges(chars: frozenset[str]) -> str:
    codes, out, i = sorted(map(ord, chars)), [], 0
    while i < len(codes):
        j = i
        while j + 1 < len(codes) and codes[j + 1] == codes[j] + 1:
            j += 1
        if j - i >= 2:
            out.append(f"{_char(chr(codes[i]))}-{_char(chr(codes[j]))}")
        else:
            out.extend(_char(chr(x)) for x in codes[i : j + 1])
        i = j + 1
    return "".join(out)


def _bracket(chars: frozenset[str]) -> str:
    if len(chars) == 1:
        return _char(next(iter(chars)))
    rest = ALPHABET - chars
    if not rest:
        return "."  # in PostgreSQL `.` matches any character, newline included
    if not chars:
        return "[^\\u0001-\\u007f]"  # nothing in a lowered ASCII text
    return f"[^{_ranges(rest)}]" if len(rest) < len(chars) else f"[{_ranges(chars)}]"


def to_are(node: Node) -> str:
    """PostgreSQL's advanced regular expression for the node, matched with `~`.

    Groups capture: `~` asks for no submatch, so they cost nothing, and `(?:` would read as a
    bind parameter to SQL layers such as SQLAlchemy's `text()`."""
    if isinstance(node, Chars):
        return _bracket(node.chars)
    if isinstance(node, Assert):
        return node.are
    if isinstance(node, Seq):
        return "".join(to_are(item) for item in node.items) or "()"
    if isinstance(node, Alt):
        return "(" + "|".join(to_are(o) for o in node.options) + ")"
    low, high = node.low, node.high
    count = {(0, None): "*", (1, None): "+", (0, 1): "?"}.get((low, high))
    if count is None:
        count = f"{{{low},}}" if high is None else f"{{{low},{high}}}"
    return f"({to_are(node.item)}){count}"


# --- literals ---------------------------------------------------------------------------------


def _product(sets: list[frozenset[str]]) -> frozenset[str] | None:
    size = 1
    for s in sets:
        size *= len(s)
    if size > _MAX_STRINGS:
        return None
    return frozenset("".join(parts) for parts in product(*sets))


def strings(node: Node) -> frozenset[str] | None:
    """Every text the node matches when that is a short list (zero-width parts match "")."""
    if isinstance(node, Chars):
        return node.chars if len(node.chars) <= _MAX_STRINGS else None
    if isinstance(node, Assert):
        return frozenset({""})
    if isinstance(node, Seq):
        parts = [strings(item) for item in node.items]
        return None if None in parts else _product(parts)  # type: ignore[arg-type]
    if isinstance(node, Alt):
        options = [strings(o) for o in node.options]
        if None in options:
            return None
        union = frozenset().union(*options)  # type: ignore[arg-type]
        return union if len(union) <= _MAX_STRINGS else None
    item = strings(node.item)
    if item is None or node.high is None:
        return None
    found: set[str] = set()
    for k in range(node.low, node.high + 1):
        repeated = _product([item] * k)
        if repeated is None:
            return None
        found |= repeated
    return frozenset(found) if len(found) <= _MAX_STRINGS else None


def _score(found: frozenset[str]) -> tuple[int, int]:
    return min(map(len, found)), -len(found)


def required(node: Node) -> frozenset[str] | None:
    """Literals one of which every match contains, or None when nothing is certain."""
    candidates: list[frozenset[str]] = []
    exact = strings(node)
    if exact and "" not in exact:
        candidates.append(exact)
    if isinstance(node, Seq):
        candidates += _runs(node.items)
        candidates += [r for r in map(required, node.items) if r is not None]
    elif isinstance(node, Alt):
        options = [required(o) for o in node.options]
        if None not in options:
            union = frozenset().union(*options)  # type: ignore[arg-type]
            if union and len(union) <= _MAX_STRINGS:
                candidates.append(union)
    elif isinstance(node, Repeat) and node.low >= 1 and (inner := required(node.item)):
        candidates.append(inner)
    return max(candidates, key=_score, default=None)


def _runs(items: tuple[Node, ...]) -> list[frozenset[str]]:
    """The strings of each longest run of adjacent items that have short lists."""
    runs: list[frozenset[str]] = []
    run: list[frozenset[str]] = []
    for item in (*items, None):
        found = strings(item) if item is not None else None
        joined = _product([*run, found]) if found is not None else None
        if joined is not None:
            run.append(found)  # type: ignore[arg-type]
            continue
        if run and (whole := _product(run)) and "" not in whole:
            runs.append(whole)
        run = [found] if found is not None else []
    return runs


def _minimal(found: frozenset[str]) -> list[str]:
    """Drops strings that contain another one: the shorter alone decides."""
    return sorted(s for s in found if not any(o != s and o in s for o in found))


# --- SQL --------------------------------------------------------------------------------------


def sql_literal(text: str) -> str:
    """A string constant, right whatever standard_conforming_strings says."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _contains_any(column: str, found: frozenset[str]) -> str:
    tests = [f"strpos({column}, {sql_literal(s)}) > 0" for s in _minimal(found)]
    return tests[0] if len(tests) == 1 else "(" + " OR ".join(tests) + ")"


def pattern_sql(node: Node, column: str) -> str:
    """A boolean SQL expression: does the parsed pattern match the lowered text in `column`."""
    exact = strings(node)
    if exact is not None and not _has_assert(node):
        if not exact:
            return "FALSE"
        return "TRUE" if "" in exact else _contains_any(column, exact)
    regex = f"{column} ~ {sql_literal(to_are(node))}"
    guard = required(node)
    return f"({_contains_any(column, guard)} AND {regex})" if guard else regex


def _has_assert(node: Node) -> bool:
    if isinstance(node, Assert):
        return True
    if isinstance(node, Seq):
        return any(map(_has_assert, node.items))
    if isinstance(node, Alt):
        return any(map(_has_assert, node.options))
    return isinstance(node, Repeat) and _has_assert(node.item)


class ReasonSql:
    """The SQL CASE that classifies `failure_reason` as ReasonClassifier does (see above)."""

    def __init__(self, patterns: dict[str, list[str]]) -> None:
        self.patterns = patterns
        self.untranslatable: Untranslatable | None = None
        self._classes: list[tuple[str, list[Node]]] = []
        try:
            self._classes = [(n, [parse(p) for p in pats]) for n, pats in patterns.items() if pats]
        except Untranslatable as exc:
            self.untranslatable = exc

    def needs_python(self, text: str, non_ascii: str) -> str:
        """A SQL test for the texts `case` marks PYTHON."""
        if self.untranslatable is not None:
            return f"coalesce({text}, '') <> ''"
        return f"(coalesce({text}, '') <> '' AND {non_ascii})"

    @staticmethod
    def lowered(text: str) -> str:
        """What `case` reads: compute it once a row (a LATERAL function in FROM), not per test."""
        return f'lower({text} COLLATE "C")'

    def case(self, text: str, lowered: str, non_ascii: str) -> str:
        """The class of `text`, given the column holding `lowered(text)`; `non_ascii` is a SQL
        test for texts PostgreSQL must not judge."""
        if self.untranslatable is not None:
            return f"CASE WHEN coalesce({text}, '') = '' THEN 'other' ELSE '{PYTHON}' END"
        whens = [
            f"WHEN {' OR '.join(pattern_sql(n, lowered) for n in nodes)} THEN {sql_literal(name)}"
            for name, nodes in self._classes
        ]
        return "\n".join(
            [
                f"CASE WHEN coalesce({text}, '') = '' THEN 'other'",
                f"WHEN {non_ascii} THEN '{PYTHON}'",
                *whens,
                "ELSE 'other' END",
            ]
        )
