"""Allows `python -m liquid_abt_drill`."""

from liquid_abt_drill.cli import main

raise SystemExit(main())
