"""The runbook path: the Alertmanager webhook receiver (receiver.py), the action worker
(worker.py), recovery verification (recovery.py) and reconciliation with Alertmanager
(reconcile.py). It turns recorded alert states into actions on the controls."""
