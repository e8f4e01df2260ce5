"""Database-backed metric sources, refreshed in the background (see base.py)."""
