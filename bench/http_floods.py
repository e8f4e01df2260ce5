"""Benchmark: does the real scraper keep getting /metrics while the exporter is flooded (issue 20)?

Three floods, each against a running exporter:

- `wrong-password`: clients looping `GET /metrics` with a wrong basic auth password on kept-alive
  connections (a closed one is reopened at once);
- `idle`: TCP connections that never send a byte (a TLS listener: they never start a handshake);
- `slow-body`: webhook requests with the right token and `Content-Length: 1000000`, whose body
  then arrives one byte a second.

`flood` runs one flood until SIGTERM (or `--seconds`) and prints what it did as JSON; the tests
start it as a separate process. `measure` starts an exporter (embedded PostgreSQL, basic auth at
bcrypt cost 10, TLS for `idle`), scrapes it idle, then under the flood, and prints the scraper's
success rate and latency percentiles on kept-alive and on new connections.

Usage:
    python bench/http_floods.py measure wrong-password [--clients 600] [--seconds 30]
    python bench/http_floods.py flood idle --port 9898 --clients 300
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

KINDS = ("wrong-password", "idle", "slow-body")


# --- the floods ------------------------------------------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


async def _wrong_password_client(host: str, port: int, auth: str, tally: Counter[str]) -> None:
    request = (
        f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {auth}\r\n\r\n"
    ).encode()
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            tally["connect_error"] += 1
            await asyncio.sleep(0.05)
            continue
        tally["connections"] += 1
        try:
            while True:
                writer.write(request)
                tally[str(await _read_response(reader))] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            tally["dropped"] += 1
        finally:
            writer.close()


async def _idle_client(host: str, port: int, tally: Counter[str], reconnect: bool) -> None:
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            tally["connect_error"] += 1
            await asyncio.sleep(0.2)
            continue
        tally["connections"] += 1
        with contextlib.suppress(OSError):
            await reader.read()  # until the server closes it
        writer.close()
        tally["closed_by_server"] += 1
        if not reconnect:
            return


async def _slow_body_client(
    host: str, port: int, path: str, token: str, tally: Counter[str]
) -> None:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
    ).encode()
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            tally["connect_error"] += 1
            await asyncio.sleep(0.2)
            continue
        tally["connections"] += 1
        try:
            writer.write(head)
            while not reader.at_eof():
                writer.write(b" ")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await reader.read(4096)
        except OSError:
            pass
        writer.close()
        tally["closed_by_server"] += 1


async def flood(args: argparse.Namespace) -> Counter[str]:
    tally: Counter[str] = Counter()
    auth = base64.b64encode(f"{args.user}:{args.password}".encode()).decode()
    clients = []
    for _ in range(args.clients):
        if args.kind == "wrong-password":
            client = _wrong_password_client(args.host, args.port, auth, tally)
        elif args.kind == "idle":
            client = _idle_client(args.host, args.port, tally, args.reconnect)
        else:
            client = _slow_body_client(args.host, args.port, args.path, args.token, tally)
        clients.append(asyncio.create_task(client))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("flooding", flush=True)  # the tests wait for this line
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(args.seconds):
            await stop.wait()
    for task in clients:
        task.cancel()
    await asyncio.wait(clients, timeout=5)
    return tally


def start_flood(kind: str, port: int, clients: int, **options: str | bool) -> subprocess.Popen[str]:
    """The flood as a separate process (its own CPU and descriptors), flooding when returned."""
    command = [sys.executable, str(Path(__file__).resolve()), "flood", kind,
               f"--port={port}", f"--clients={clients}",
               *(f"--{name.replace('_', '-')}" + ("" if value is True else f"={value}")
                 for name, value in options.items())]  # fmt: skip
    # stderr to a file: a pipe nobody reads would stall the flood once full.
    errors = tempfile.NamedTemporaryFile(prefix="http-flood-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
    process.errors_path = errors.name  # type: ignore[attr-defined]
    assert process.stdout is not None
    if process.stdout.readline().strip() != "flooding":
        process.kill()
        raise RuntimeError(f"flood {kind} did not start")
    return process


def stop_flood(process: subprocess.Popen[str]) -> dict[str, int]:
    """What the flood did: connections, answers by status, connections dropped."""
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    errors = Path(process.errors_path)  # type: ignore[attr-defined]
    try:
        if not out.strip():
            err = errors.read_text()[-2000:]
            raise RuntimeError(f"the flood said nothing (exit {process.returncode}): {err}")
    finally:
        errors.unlink(missing_ok=True)
    return json.loads(out.strip().splitlines()[-1])


# --- the scraper -----------------------------------------------------------------------------


class Scraper:
    """GET /metrics, as Prometheus does (kept alive), or on a new connection each time; from
    `source` (127.0.0.2: another address than the flood's, as Prometheus is another host)."""

    def __init__(
        self,
        port: int,
        headers: dict[str, str],
        context: ssl.SSLContext | None,
        source: str | None = "127.0.0.2",
    ) -> None:
        self.port, self.headers, self.context = port, headers, context
        self.source = (source, 0) if source else None
        self._conn: http.client.HTTPConnection | None = None
        self.errors: list[str] = []  # why each failed scrape failed

    def _connect(self) -> http.client.HTTPConnection:
        if self.context is None:
            return http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=10, source_address=self.source
            )
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=10, context=self.context, source_address=self.source
        )

    def scrape(self, keep_alive: bool) -> float | None:
        """Seconds for one good answer, None for a failure."""
        started = time.monotonic()
        conn = self._conn if keep_alive and self._conn is not None else self._connect()
        try:
            conn.request("GET", "/metrics", headers=self.headers)
            response = conn.getresponse()
            body = response.read()
            ok = response.status == 200 and b"liquid_abt_build_info" in body
            if not ok:
                self.errors.append(f"HTTP {response.status}: {body[:80]!r}")
        except (OSError, http.client.HTTPException) as exc:
            self.errors.append(
                f"{type(exc).__name__}: {exc} after {time.monotonic() - started:.1f}s"
            )
            ok = False
        if keep_alive and ok:
            self._conn = conn
        else:
            conn.close()
            if keep_alive:
                self._conn = None
        return time.monotonic() - started if ok else None


def summarize(results: list[float | None]) -> dict[str, float]:
    good = sorted(r for r in results if r is not None)
    summary = {"requests": len(results), "success_percent": 100 * len(good) / max(1, len(results))}
    if good:
        summary["p50_ms"] = 1000 * statistics.median(good)
        summary["p99_ms"] = 1000 * good[min(len(good) - 1, int(0.99 * len(good)))]
    return {k: round(v, 1) for k, v in summary.items()}


def scrape_for(scraper: Scraper, seconds: float, interval: float) -> dict[str, object]:
    results: dict[str, list[float | None]] = {"keep_alive": [], "new_connection": []}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for mode in results:
            results[mode].append(scraper.scrape(keep_alive=mode == "keep_alive"))
        time.sleep(interval)
    return {mode: summarize(values) for mode, values in results.items()}


# --- measure: an exporter of its own --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_serving(scraper: Scraper, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exporter exited with {process.returncode}")
        if scraper.scrape(keep_alive=False) is not None:
            return
        time.sleep(0.5)
    raise RuntimeError("exporter not serving in time")


def measure(args: argparse.Namespace) -> dict[str, object]:
    import bcrypt
    import trustme
    import yaml

    folder = Path(tempfile.mkdtemp(prefix="liquid-abt-floods-"))
    os.chmod(folder, 0o755)  # the embedded server's user must reach it when run as root
    web: dict[str, object] = {
        "basic_auth_users": {"prom": bcrypt.hashpw(b"right", bcrypt.gensalt(10)).decode()}
    }
    context = None
    if args.kind == "idle":
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        cert.cert_chain_pems[0].write_to_path(str(folder / "tls.crt"))
        cert.private_key_pem.write_to_path(str(folder / "tls.key"))
        web["tls_server_config"] = {"cert_file": "tls.crt", "key_file": "tls.key"}
        context = ssl.create_default_context()
        ca.configure_trust(context)
    (folder / "web.yml").write_text(yaml.safe_dump(web))
    (folder / "config.yml").write_text(yaml.safe_dump({"kraken": {"enabled": False}}))
    port, token = _free_port(), "bench-webhook-token"
    env = {**os.environ, "LIQUID_ABT_WEBHOOK_TOKEN": token}
    env.pop("DATABASE_URL", None)
    limit = args.open_files

    def low_open_files() -> None:
        if limit:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    exporter = subprocess.Popen(
        [sys.executable, "-m", "exporter", "serve", "--embedded-db",
         f"--embedded-db.dir={folder / 'pg'}", f"--web.listen-address=127.0.0.1:{port}",
         f"--config.file={folder / 'config.yml'}", f"--web.config.file={folder / 'web.yml'}",
         f"--web.max-connections={args.max_connections}", "--log.level=warn"],
        env=env, preexec_fn=low_open_files, stdout=subprocess.DEVNULL,
        stderr=open(folder / "exporter.log", "wb"),  # noqa: SIM115
    )  # fmt: skip
    scraper = Scraper(port, {"Authorization": "Basic " + base64.b64encode(b"prom:right").decode()},
                      context)  # fmt: skip
    try:
        _wait_serving(scraper, exporter, 120)
        idle = scrape_for(scraper, args.seconds / 2, args.interval)
        options: dict[str, str | bool] = {"user": "prom", "password": "wrong", "token": token}
        if args.kind == "idle":  # closed ones come back: the flood lasts the whole measurement
            options["reconnect"] = True
        flooding = start_flood(args.kind, port, args.clients, **options)
        try:
            time.sleep(3)  # the flood at full strength
            under_flood = scrape_for(scraper, args.seconds, args.interval)
        finally:
            tally = stop_flood(flooding)
    finally:
        exporter.send_signal(signal.SIGTERM)
        exporter.wait(60)
    return {"kind": args.kind, "clients": args.clients, "max_connections": args.max_connections,
            "open_files": limit or "unchanged", "idle": idle, "flood": under_flood,
            "flood_client": tally, "log": str(folder / "exporter.log")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("flood")
    run.add_argument("kind", choices=KINDS)
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, required=True)
    run.add_argument("--clients", type=int, default=300)
    run.add_argument("--seconds", type=float, default=3600)
    run.add_argument("--user", default="prom")
    run.add_argument("--password", default="wrong")
    run.add_argument("--token", default="")
    run.add_argument("--path", default="/webhook/alertmanager")
    run.add_argument("--reconnect", action="store_true", help="idle: reopen closed connections")
    bench = commands.add_parser("measure")
    bench.add_argument("kind", choices=KINDS)
    bench.add_argument("--clients", type=int, default=600)
    bench.add_argument("--seconds", type=float, default=30)
    bench.add_argument("--interval", type=float, default=0.2)
    bench.add_argument("--max-connections", type=int, default=512)
    bench.add_argument("--open-files", type=int, default=0, help="RLIMIT_NOFILE of the exporter")
    args = parser.parse_args()
    if args.command == "flood":
        print(json.dumps(dict(asyncio.run(flood(args)))), flush=True)
    else:
        print(json.dumps(measure(args), indent=2))


if __name__ == "__main__":
    main()
