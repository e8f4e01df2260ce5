"""The shared controls in PostgreSQL, one module each: the circuit breaker (breaker/), the purchase
pause (pause.py), the API rate (api_rate.py), the retry queue (retry_queue.py), the audit log
(audit.py), the platform's pre-purchase gate (gate.py), and their metrics (exposition.py)."""
