"""`kraken-server`: the fake Kraken on real sockets until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from exporter.signals.kraken.signing import decode_secret

from .server import FakeKraken
from .state import FakeKrakenState, Mode

log = logging.getLogger("liquid_abt_drill.kraken_server.server")


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {value!r}")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liquid-abt-drill kraken-server",
        description="Kraken-compatible REST server for tests and drills. "
        "API key and secret come from --api-key-file/--api-secret-file "
        "or KRAKEN_API_KEY/KRAKEN_API_SECRET.",
    )
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 9988), metavar="HOST:PORT")
    parser.add_argument(
        "--control-listen",
        type=_address,
        metavar="HOST:PORT",
        help="separate port for /_control/mode, reachable in down mode",
    )
    parser.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.HEALTHY.value)
    parser.add_argument("--latency", type=float, help="seconds of delay (slow mode default 6)")
    parser.add_argument("--api-key-file", type=Path)
    parser.add_argument("--api-secret-file", type=Path)
    parser.add_argument(
        "--api-keys-file",
        type=Path,
        help="more accepted keys, one `KEY SECRET` pair a line (one key per program: nonces must "
        "increase per key)",
    )
    return parser


def read_keys(path: Path) -> dict[str, str]:
    """`KEY SECRET` lines (blank lines and # comments skipped); each secret must be base64."""
    keys = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"{path}:{number}: expected `KEY SECRET`")
        decode_secret(fields[1])
        keys[fields[0]] = fields[1]
    return keys


def _secret(path: Path | None, env: str) -> str | None:
    if path is not None:
        return path.read_text().strip()
    return os.environ.get(env) or None


async def _serve(state: FakeKrakenState, args: argparse.Namespace) -> None:
    fake = FakeKraken(state)
    control = args.control_listen or (None, None)
    await fake.start(*args.listen, control_host=control[0], control_port=control[1])
    log.info("fake Kraken on %s (control %s), mode %s", fake.url, fake.control_url, state.mode)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """`kraken-server --listen 127.0.0.1:9988 [--control-listen ...] [--mode healthy]`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        key = _secret(args.api_key_file, "KRAKEN_API_KEY")
        secret = _secret(args.api_secret_file, "KRAKEN_API_SECRET")
        if secret is not None:
            decode_secret(secret)
        keys = read_keys(args.api_keys_file) if args.api_keys_file else {}
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    if (key is None) != (secret is None):
        parser.error("give both the API key and the API secret, or neither")
    state = FakeKrakenState(api_key=key, api_secret=secret, keys=keys)
    state.apply(args.mode, args.latency)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_serve(state, args))
    return 0
