"""The runbooks' post-incident questions, for people: the report asks them and leaves the answers
blank. Each keeps the runbook's own item, so a reader can find it in the runbook."""

from __future__ import annotations

from typing import Final

# (where, ((the runbook's item, the question), ...))
CHECKLIST: Final = (
    (
        'bitcoin-purchase-failures.md, "Post-Incident Actions" (Root Cause Analysis, '
        "Customer Follow-up, Update Documentation)",
        (
            ("Review timeline of events",
             "Is the timeline above complete and right? What happened that the exporter did not "
             "record?"),
            ("Identify primary and contributing factors", "What was the primary cause?"),
            ("Identify primary and contributing factors", "What contributed to it?"),
            ("Document lessons learned", "What did we learn?"),
            ("Update monitoring thresholds if needed",
             "Do the alert thresholds need to change (the failure rate over 15 minutes, the "
             "warning)?"),
            ("preventiveMeasures", "Which preventive measures do we tell the affected customers "
             "about?"),
            ("Update this runbook with new scenarios",
             "Does a runbook need a new scenario, and who else needs to know?"),
        ),
    ),
    (
        'exchange-api-failures.md, "Post-Incident Review" (Improvements)',
        (
            ("Review circuit breaker thresholds",
             "Were the breaker and incident timings right (failureThreshold, recoveryTimeout, "
             "monitoringWindow, probation), given the times to stop and resume above?"),
            ("Consider implementing backup exchange",
             "Would a secondary exchange have kept purchases going?"),
            ("Update API key rotation schedule",
             "Did credentials play a part; does the API key rotation schedule need updating?"),
            ("Enhance monitoring sensitivity",
             "Should monitoring be more or less sensitive: was a page missing, late or extra?"),
        ),
    ),
)  # fmt: skip


def questions() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(source, questions) pairs, each question ending with the runbook's item it comes from."""
    return tuple(
        (source, tuple(f'{question} (runbook: "{item}")' for item, question in items))
        for source, items in CHECKLIST
    )
