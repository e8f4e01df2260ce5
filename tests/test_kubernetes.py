"""deploy/kubernetes: generated from the repository, valid for the Kubernetes API (kubernetes-validate),
the two prometheus-operator resources checked against their schemas (check-jsonschema) and the
rules by promtool, and consistent with the exporter (flags, config, job name, dashboards)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.cli import build_parser
from exporter.config import parse_config
from tests.harness import EXPORTER_JOB, REPO, RULE_FILES, require_binary

KUBERNETES = REPO / "deploy" / "kubernetes"
MANIFESTS = KUBERNETES / "manifests"
SCHEMAS = KUBERNETES / "schemas"
CORE_FILES = [
    "config.yaml", "statefulset.yaml", "service.yaml", "poddisruptionbudget.yaml", "dashboards.yaml",
]  # fmt: skip


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    assert path, f"{name} is not installed (make test installs it)"
    return path


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def one(name: str, kind: str, named: str | None = None) -> dict[str, Any]:
    [document] = [
        d for d in documents(name)
        if d["kind"] == kind and named in (None, d["metadata"]["name"])
    ]  # fmt: skip
    return document


def test_generated_manifests_are_the_committed_ones() -> None:
    result = subprocess.run(
        [sys.executable, str(KUBERNETES / "generate.py"), "--check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, "run `make kubernetes` and commit:\n" + result.stderr


def _kubernetes_validate(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "--quiet", *map(str, files)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_core_resources_are_valid_for_the_kubernetes_api(tmp_path: Path) -> None:
    result = _kubernetes_validate(*(MANIFESTS / name for name in CORE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout + result.stderr
    # The validator is strict: a misspelt field fails.
    broken = one("statefulset.yaml", "StatefulSet")
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    (tmp_path / "statefulset.yaml").write_text(yaml.safe_dump(broken))
    result = _kubernetes_validate(tmp_path / "statefulset.yaml")
    assert result.returncode != 0 and "livenesProbe" in result.stdout + result.stderr


def _check_jsonschema(schema: Path, document: dict[str, Any], tmp_path: Path) -> str:
    instance = tmp_path / f"{document['metadata']['name']}-{document['kind']}.json"
    instance.write_text(json.dumps(document))
    result = subprocess.run(
        [_tool("check-jsonschema"), "--schemafile", str(schema), str(instance)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return "" if result.returncode == 0 else result.stdout + result.stderr


@pytest.mark.parametrize(
    ("file", "schema"),
    [
        ("servicemonitor.yaml", "servicemonitor.json"),
        ("prometheusrules.yaml", "prometheusrule.json"),
    ],
)
def test_prometheus_operator_resources_match_their_schemas(
    file: str, schema: str, tmp_path: Path
) -> None:
    for document in documents(file):
        assert _check_jsonschema(SCHEMAS / schema, document, tmp_path) == ""
    broken = documents(file)[0]
    broken["spec"]["endpointz" if file.startswith("service") else "groupz"] = []
    assert _check_jsonschema(SCHEMAS / schema, broken, tmp_path) != ""


def test_prometheus_rules_are_the_shipped_rule_files_and_pass_promtool(tmp_path: Path) -> None:
    rules = {d["metadata"]["name"]: d["spec"] for d in documents("prometheusrules.yaml")}
    assert len(rules) == len(RULE_FILES)
    for path in RULE_FILES:
        spec = rules["liquid-abt-" + path.name.removesuffix(".rules.yml")]
        assert spec == yaml.safe_load(path.read_text())
        (tmp_path / path.name).write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [require_binary("promtool"), "check", "rules", *map(str, sorted(tmp_path.glob("*.yml")))],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_monitor_scrapes_the_service_as_the_job_the_rules_watch() -> None:
    # The job label prometheus-operator sets is the Service's name.
    service = one("service.yaml", "Service", named=EXPORTER_JOB)
    headless = one("service.yaml", "Service", named=f"{EXPORTER_JOB}-pods")
    monitor = one("servicemonitor.yaml", "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    # The StatefulSet's headless Service would scrape every pod twice under another job.
    assert not selector.items() <= headless["metadata"]["labels"].items()
    # The alert timings assume a scrape every 15 s (alerts/README.md).
    assert [e["interval"] for e in monitor["spec"]["endpoints"]] == ["15s"]
    assert "15 s" in (REPO / "alerts" / "README.md").read_text()
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    assert [e["path"] for e in monitor["spec"]["endpoints"]] == ["/metrics"]


def test_stateful_set_runs_replicas_the_exporter_accepts() -> None:
    stateful_set = one("statefulset.yaml", "StatefulSet")
    spec = stateful_set["spec"]
    assert spec["serviceName"] == one("service.yaml", "Service", named=f"{EXPORTER_JOB}-pods")[
        "metadata"]["name"]  # fmt: skip
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    args = build_parser().parse_args(container["args"])
    assert args.command == "serve" and not args.embedded_db
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    # The config the pods mount is valid, and reconciliation with Alertmanager is on.
    config_map = one("config.yaml", "ConfigMap")
    config = parse_config(yaml.safe_load(config_map["data"]["config.yml"]))
    assert config.receiver.alertmanager_url
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert args.config_file == f"{mounts['config']}/config.yml"
    secret_files = [e["value"] for e in container["env"] if e["name"].endswith("_FILE")]
    secret_mounts = (mounts["secrets"] + "/", mounts["kraken"] + "/")
    assert secret_files and all(v.startswith(secret_mounts) for v in secret_files)


def test_dashboards_are_config_maps_of_the_shipped_json() -> None:
    config_map = one("dashboards.yaml", "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = {p.name: p.read_text() for p in (REPO / "grafana" / "dashboards").glob("*.json")}
    assert config_map["data"] == shipped


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of an env value from the variables defined before it."""
    for name, known in env.items():
        value = value.replace(f"$({name})", known)
    return value


def test_each_replica_reads_its_own_kraken_key() -> None:
    """Kraken nonces must increase per key: two replicas on one key refuse each other's calls.
    Each pod's KRAKEN_API_KEY_FILE / _SECRET_FILE name a file of its own in the Kraken Secret."""
    stateful_set = one("statefulset.yaml", "StatefulSet")
    pod = stateful_set["spec"]["template"]["spec"]
    [container] = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    names = [e["name"] for e in container["env"]]
    assert names.index("POD_NAME") < names.index("KRAKEN_API_KEY_FILE")
    assert next(e for e in container["env"] if e["name"] == "POD_NAME")["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}}  # fmt: skip
    files = set()
    for ordinal in range(stateful_set["spec"]["replicas"]):
        env = {"POD_NAME": f"{stateful_set['metadata']['name']}-{ordinal}"}
        for variable in ("KRAKEN_API_KEY_FILE", "KRAKEN_API_SECRET_FILE"):
            [raw] = [e["value"] for e in container["env"] if e["name"] == variable]
            path = Path(_expand(raw, env))
            assert str(path.parent) == mounts["kraken"] and "$(" not in str(path)
            files.add(path.name)
    assert len(files) == 2 * stateful_set["spec"]["replicas"], files
    assert volumes["kraken"]["secret"]["secretName"] == f"{EXPORTER_JOB}-kraken"
    # The secret keys are valid Secret data keys (the docs' `kubectl create secret` makes them).
    assert all(re.fullmatch(r"[-._a-zA-Z0-9]+", name) for name in files)


def test_make_kubernetes_needs_only_what_make_run_installs(tmp_path: Path) -> None:
    """A virtualenv with the run requirements only: `make kubernetes` installs nothing more."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / ".run-installed").touch()  # newer than the locks: what `make run` left
    result = subprocess.run(
        ["make", "--dry-run", "-C", str(REPO), "kubernetes", f"VENV={venv}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "requirements/test.txt" not in result.stdout and "pip install" not in result.stdout
    assert "deploy/kubernetes/generate.py" in result.stdout
