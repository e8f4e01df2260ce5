"""Reloading the configuration files on SIGHUP or `POST /-/reload`, like Prometheus does.

The web config file (`--web.config.file`) applies in full: certificates, client CAs, basic auth
users and headers take effect for new connections and requests. Switching TLS on or off needs a
restart. The main config file (`--config.file`) is re-read and checked; the collectors, probe and
actions were built from it at start, so any difference from the running configuration needs a
restart: each changed key is named in one log line and the running value is kept. Either way the
outcome is in `liquid_abt_config_last_reload_successful`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from exporter.config import Config, ConfigError, load_config
from exporter.web.webconfig import WebConfigError, WebSecurity, load_web_config

log = logging.getLogger(__name__)


@dataclass
class ReloadResult:
    ok: bool = True
    problems: list[str] = field(default_factory=list)

    def refuse(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)


def changed_keys(running: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two dumps of a configuration."""
    if isinstance(running, dict) and isinstance(new, dict):
        keys: list[str] = []
        for key in sorted(set(running) | set(new), key=str):
            keys += changed_keys(running.get(key), new.get(key), f"{prefix}{key}.")
        return keys
    return [] if running == new else [prefix.rstrip(".")]


class Reloader:
    """Re-reads the files the process was started with; one reload at a time."""

    def __init__(
        self,
        registry: CollectorRegistry,
        running: Config,
        config_file: Path | None = None,
        security: WebSecurity | None = None,
        web_config_file: Path | None = None,
    ) -> None:
        self.running = running
        self._config_file = config_file
        self._security = security
        self._web_config_file = web_config_file
        self._lock = asyncio.Lock()
        self._successful = Gauge(
            "liquid_abt_config_last_reload_successful",
            "1 when the last reload applied the configuration files as they are on disk.",
            registry=registry,
        )
        self._success_time = Gauge(
            "liquid_abt_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful reload (or of the start).",
            registry=registry,
        )
        self._successful.set(1)
        self._success_time.set(time.time())

    async def reload(self) -> ReloadResult:
        async with self._lock:
            result = ReloadResult()
            try:
                self._reload_web_config(result)
                self._reload_config(result)
            except Exception as exc:  # a bug: refused all the same, never half-reported
                log.exception("reload failed", extra={"error": str(exc)})
                result.refuse(f"reload failed: {type(exc).__name__}")
            self._successful.set(1 if result.ok else 0)
            if result.ok:
                self._success_time.set(time.time())
                log.info("configuration reloaded")
            else:
                log.error("reload incomplete: the running configuration is kept where refused",
                          extra={"problems": "; ".join(result.problems)})  # fmt: skip
            return result

    def _reload_config(self, result: ReloadResult) -> None:
        if self._config_file is None:
            return
        try:
            new = load_config(self._config_file)
        except ConfigError as exc:
            log.error("reload refused: invalid configuration file", extra={"error": str(exc)})
            result.refuse(str(exc))
            return
        keys = changed_keys(self.running.model_dump(), new.model_dump())
        if keys:
            log.warning(
                "configuration change needs a restart: the running values are kept",
                extra={"file": str(self._config_file), "keys": ",".join(keys)},
            )
            result.refuse(f"{self._config_file}: changed keys need a restart: {', '.join(keys)}")

    def _reload_web_config(self, result: ReloadResult) -> None:
        if self._security is None or self._web_config_file is None:
            return
        try:
            new = load_web_config(self._web_config_file)
        except WebConfigError as exc:
            log.error("reload refused: invalid web config file", extra={"error": str(exc)})
            result.refuse(str(exc))
            return
        running = self._security.config
        if (new.tls is None) != (running.tls is None):
            wanted = "off" if new.tls is None else "on"
            log.warning(
                f"switching TLS {wanted} needs a restart: TLS settings kept as they are",
                extra={"file": str(self._web_config_file)},
            )
            result.refuse(f"{self._web_config_file}: switching TLS {wanted} needs a restart")
            new.tls = running.tls
        self._security.replace(new)
