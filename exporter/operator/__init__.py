"""`liquid-abt-exporter admin ...`: the operator's command line for a running exporter's admin API.

client.py speaks HTTP to /api/admin/ (token from LIQUID_ABT_ADMIN_TOKEN or _FILE, one-line
errors); render.py prints the answers as tables; commands.py holds the flags and the commands.
"""

from exporter.operator.commands import main

__all__ = ["main"]
