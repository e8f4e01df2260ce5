"""`liquid-abt-drill COMMAND`: one entry point for the drill's programs, each with its own flags."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

# command -> (what it does, for the usage text). Each program is imported only when run.
COMMANDS: dict[str, str] = {
    "demo": "run the whole loop locally (database, Kraken-compatible server, exporter, simulator, "
    "Prometheus and Alertmanager when installed); --drill runs a scripted outage",
    "drill": "replay the runbooks' incidents on the whole loop and print their timelines",
    "simulate": "write simulated purchases and API call logs, for demos and drills",
    "kraken-server": "run the Kraken-compatible server for tests and drills",
}


def _program(command: str) -> Callable[[list[str]], int]:
    if command == "demo":
        from .demo import main as demo

        return demo
    if command == "drill":
        from .incidents import main as drill

        return drill
    if command == "simulate":
        from .simulate import main as simulate

        return simulate
    from .kraken_server.cli import main as kraken_server

    return kraken_server


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "usage: liquid-abt-drill COMMAND [ARGS]  (COMMAND --help for its flags)\n\n" + "\n".join(
        lines
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n{usage()}", file=sys.stderr)
        return 2
    return _program(command)(rest)
