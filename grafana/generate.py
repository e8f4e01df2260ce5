"""Generate the LIQUID ABT dashboards in grafana/dashboards: `make dashboards`.

Writes liquid-abt-incident.json (what an on-call engineer needs during an incident, per exchange
first) and liquid-abt-exporter.json (the exporter itself) from grafana/incident.py and
grafana/exporter_health.py. Other *.json files in grafana/dashboards are written by hand and left
alone. `--check` exits 1 when a committed file differs from a fresh generation (the tests run it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import exporter_health
import incident

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DASHBOARDS = {
    "liquid-abt-incident.json": incident.dashboard,
    "liquid-abt-exporter.json": exporter_health.dashboard,
}


def render() -> dict[str, str]:
    """File name -> content of every generated dashboard."""
    return {name: _json(build()) for name, build in DASHBOARDS.items()}


def _json(dashboard: dict[str, Any]) -> str:
    return json.dumps(dashboard, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run `make dashboards`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
