"""The admin API under /api/admin/, mirroring the runbook's calls, behind its own bearer token:
authentication and JSON errors (common.py), then one route table per concern."""
