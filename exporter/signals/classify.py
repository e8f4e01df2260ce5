"""Classifies free-text `failure_reason` values into the closed reason set of the runbooks."""

from __future__ import annotations

import re
from functools import lru_cache

from exporter.labels import OTHER, REASON_CLASSES


class ReasonClassifier:
    """First matching class wins, in the configured order; unknown text is `other`.

    Reasons repeat a lot (the platform writes a few distinct messages), so results are cached.
    """

    def __init__(self, patterns: dict[str, list[str]]) -> None:
        self._rules = [
            (name, re.compile("|".join(f"(?:{p})" for p in pats), re.IGNORECASE))
            for name, pats in patterns.items()
            if pats
        ]
        self.classify = lru_cache(maxsize=4096)(self._classify)

    def _classify(self, reason: str | None) -> str:
        if not reason:
            return OTHER
        for name, regex in self._rules:
            if regex.search(reason):
                return name
        return OTHER

    @staticmethod
    def classes() -> tuple[str, ...]:
        return REASON_CLASSES
