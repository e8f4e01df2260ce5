"""The post-incident review, generated from what the exporter recorded (issue 23): the incident
periods as numbered incidents, and for one of them the timeline, the impact by the runbook's
query, the times to stop and resume, the customer notices and the runbooks' RCA questions.

`load.py` reads one incident in one read-only snapshot transaction; `model.py` builds the review
from those rows (pure); `markdown.py` writes it for people (pure). The admin API and the operator
CLI serve the same review as JSON and as Markdown.
"""

from exporter.runbook.review.load import (
    IncidentNotFound,
    list_incidents,
    load_review,
    parse_reference,
)
from exporter.runbook.review.markdown import markdown
from exporter.runbook.review.model import IncidentPeriod, Review

__all__ = [
    "IncidentNotFound",
    "IncidentPeriod",
    "Review",
    "list_incidents",
    "load_review",
    "markdown",
    "parse_reference",
]
