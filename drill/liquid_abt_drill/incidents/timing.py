"""Scaled timers and the configuration of the drilled loop: the shipped defaults times `scale`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from exporter.config import format_duration, parse_duration

from ..stack import (
    alerts_dir,
    rule_files,
)

EXCHANGE = "kraken"
TOKEN = "drill-webhook-token"
PAGER = "oncall-pager"  # the receiver that pages in alerts/alertmanager.yml
# The escalation levels' receivers in alerts/alertmanager.yml (e-mail in production).
ESCALATIONS = ("technical-lead", "engineering-manager", "cto")
AUTOMATION = "liquid-abt-exporter"


@dataclass(frozen=True)
class Timing:
    """Every timer the shipped one times `scale`; client timeouts never below `timeout_floor`
    seconds: a scaled timeout of half a second measures how busy the machine is, not whether
    the exchange answers (the smoke drills of `make test` set it; `make drill` runs scale 1)."""

    scale: float = 1.0
    timeout_floor: float = 0.0

    def s(self, shipped: float) -> float:
        return shipped * self.scale

    def timeout(self, shipped: float) -> float:
        """A client timeout, in real seconds."""
        return max(self.timeout_floor, self.s(shipped))

    def d(self, shipped: float) -> str:
        """A duration for a config file: the shipped one, scaled, in milliseconds."""
        return f"{max(1, round(shipped * self.scale * 1000))}ms"

    def shipped(self, real: float) -> float:
        return real / self.scale


# ---- configuration, scaled -----------------------------------------------------------------


def exporter_config(
    t: Timing, kraken_url: str, alertmanager_url: str, secondaries: Mapping[str, str] | None = None
) -> str:
    """The shipped defaults (exporter/config.py), scaled; `secondaries` (exchange -> fake URL)
    are configured `role: secondary` beside Kraken, probed and verified on the same cadence."""
    config: dict[str, Any] = {
        "collectors": {"interval": t.d(15), "timeout": t.d(10)},
        "database": {"health_interval": t.d(5)},
        "kraken": {"base_url": kraken_url, "timeout": f"{round(t.timeout(10) * 1000)}ms",
                   "probe_interval": t.d(30),
                   "doubt_interval": t.d(2), "incident_interval": t.d(5),
                   "call_spacing": t.d(1)},
        "breaker": {"failure_threshold": 2, "recovery_timeout": t.d(30),
                    "monitoring_window": t.d(600)},
        "incident": {"probation": t.d(90), "backoff_max": t.d(600),
                     "replica_stale_after": t.d(60), "rate_restore_after": t.d(20),
                     "platform_window": t.d(60)},
        "retry": {"base_delay": t.d(60), "max_delay": t.d(3600), "fill_interval": t.d(5)},
        "receiver": {"alertmanager_url": alertmanager_url, "reconcile_interval": t.d(60),
                     "retry_max_delay": t.d(60)},
        "notices": {"started_after": t.d(45), "ongoing_every": t.d(1800), "blip": t.d(300),
                    "follow_up": t.d(900), "interval": t.d(5), "idle_interval": t.d(10),
                    "claim_lease": t.d(300), "retry_base_delay": t.d(30),
                    "retry_max_delay": t.d(1800)},
    }  # fmt: skip
    if secondaries:
        config["exchanges"] = {
            "kraken": {"role": "primary"},
            **{name: {"role": "secondary"} for name in secondaries},
        }
        probe = {k: v for k, v in config["kraken"].items() if k != "base_url"}
        for name, url in secondaries.items():
            config[name] = {**probe, "enabled": True, "base_url": url, "verify_interval": t.d(15)}
        config["kraken"]["verify_interval"] = t.d(15)
    return yaml.safe_dump(config, sort_keys=False)  # fmt: skip


_DURATION_KEYS = re.compile(r"(\n\s+(?:for|keep_firing_for):\s*)(\S+)")
_RANGE = re.compile(r"\[(\d+[smhd])(:\d*[smhd]?)?\]")


def scaled_rules(folder: Path, t: Timing) -> list[Path]:
    """Copies of the shipped rules with every `for:`, `keep_firing_for:` and range scaled."""
    folder.mkdir(parents=True, exist_ok=True)

    def duration(match: re.Match[str]) -> str:
        if match.group(2) == "0s":  # an escalation twin's keep_firing_for: none, at any scale
            return match.group(0)
        return f"{match.group(1)}{t.d(parse_duration(match.group(2)))}"

    def window(match: re.Match[str]) -> str:
        # Never below four scrapes: rate() needs two samples in the window.
        seconds = max(parse_duration(match.group(1)) * t.scale, 4 * t.s(15))
        return f"[{format_duration(round(seconds))}{match.group(2) or ''}]"

    copies = []
    for path in rule_files(slo=False):  # days of windows do not scale into a drill
        text = _RANGE.sub(window, _DURATION_KEYS.sub(duration, path.read_text()))
        (folder / path.name).write_text(text)
        copies.append(folder / path.name)
    return copies


def alertmanager_config(t: Timing, exporter_urls: Sequence[str], token: Path, pager: str) -> str:
    """The shipped alerts/alertmanager.yml, timers scaled, human receivers pointed at `pager`."""
    shipped = yaml.safe_load((alerts_dir() / "alertmanager.yml").read_text())
    shipped["global"] = {
        "resolve_timeout": t.d(parse_duration(shipped["global"]["resolve_timeout"]))
    }

    def scale_route(route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval", "repeat_interval"):
            if key in route:
                route[key] = t.d(parse_duration(route[key]))
        for child in route.get("routes", []):
            scale_route(child)

    scale_route(shipped["route"])
    receivers = []
    for receiver in shipped["receivers"]:
        name = receiver["name"]
        if name == AUTOMATION:
            template = receiver["webhook_configs"][0]
            configs = [{**template, "url": f"{url}/webhook/alertmanager", "http_config": {
                "authorization": {"type": "Bearer", "credentials_file": str(token)}}}
                for url in exporter_urls]  # fmt: skip
        else:
            configs = [{"url": f"{pager}/{name}", "send_resolved": True}]
        receivers.append({"name": name, "webhook_configs": configs})
    shipped["receivers"] = receivers
    return yaml.safe_dump(shipped)
