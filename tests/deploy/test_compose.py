"""Offline checks of deploy/docker-compose.yml and deploy/Dockerfile.

No Docker engine is needed: the compose file is read as YAML and held against what the code
expects (console scripts from pyproject.toml, settings fields from ess_common.settings), so a
renamed entry point or a mistyped variable fails here rather than at a site's first start.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from ess_common.settings import EdgeSettings, HeadSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"

INFRA_SERVICES = {"postgres", "rabbitmq", "s3"}
ESS_SERVICES = {"migrate", "head-api", "broker", "notifier", "edge-a", "edge-b"}
EDGES = ("edge-a", "edge-b")
HEALTHCHECKED = {"postgres", "rabbitmq", "s3", "head-api"}
COMMANDS = {
    "migrate": ["ess", "db", "upgrade"],
    "head-api": ["ess-head-api"],
    "broker": ["ess-broker"],
    "notifier": ["ess-notifier"],
    "edge-a": ["ess-edge"],
    "edge-b": ["ess-edge"],
}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; $$ escapes a $.
VARIABLE = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}")


@cache
def compose_text() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


@cache
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(compose_text())
    assert isinstance(loaded, dict), "compose file is not a mapping"
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found = compose().get("services")
    assert isinstance(found, dict), "compose file has no services mapping"
    return found


def service(name: str) -> dict[str, Any]:
    found = services()[name]
    assert isinstance(found, dict)
    return found


def interpolate(value: str) -> str:
    """What compose makes of `value` with none of its variables set."""

    def default(match: re.Match[str]) -> str:
        return match["arg"] if match["op"] in (":-", "-") else ""

    return VARIABLE.sub(default, value).replace("$$", "$")


def environment(name: str) -> dict[str, str]:
    env = service(name).get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    assert isinstance(env, dict), f"{name}: environment must be a mapping or a list"
    return {str(key): interpolate(str(value)) for key, value in env.items()}


def command(name: str) -> list[str]:
    cmd = service(name).get("command")
    if isinstance(cmd, str):
        return cmd.split()
    assert isinstance(cmd, list), f"{name}: no command"
    return [str(part) for part in cmd]


def depends_on(name: str) -> dict[str, str]:
    """Dependency -> condition, for both the list and the mapping form."""
    deps = service(name).get("depends_on", {})
    if isinstance(deps, list):
        return {str(dep): "service_started" for dep in deps}
    assert isinstance(deps, dict)
    return {
        str(dep): str((spec or {}).get("condition", "service_started"))
        for dep, spec in deps.items()
    }


@cache
def console_scripts() -> dict[str, str]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        scripts = tomllib.load(handle)["project"]["scripts"]
    assert isinstance(scripts, dict)
    return {str(name): str(target) for name, target in scripts.items()}


def setting_variables() -> set[str]:
    fields = set(HeadSettings.model_fields) | set(EdgeSettings.model_fields)
    return {f"ESS_{field.upper()}" for field in fields}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    pairs = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def test_every_service_is_declared() -> None:
    missing = (INFRA_SERVICES | ESS_SERVICES) - set(services())
    assert not missing, f"services missing from the compose file: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(ESS_SERVICES))
def test_ess_services_run_their_console_script(name: str) -> None:
    cmd = command(name)
    assert cmd == COMMANDS[name]
    assert cmd[0] in console_scripts(), f"{name}: {cmd[0]} is not in [project.scripts]"


def test_ess_services_share_one_image() -> None:
    images = {name: service(name).get("image") for name in ESS_SERVICES}
    builds = {name: json.dumps(service(name).get("build"), sort_keys=True) for name in ESS_SERVICES}
    assert len(set(images.values())) == 1, f"ESS services use different images: {images}"
    assert len(set(builds.values())) == 1, f"ESS services build differently: {builds}"
    assert None not in images.values()


def test_build_points_at_the_dockerfile_and_the_repository_root() -> None:
    build = service("head-api")["build"]
    assert isinstance(build, dict)
    context = (COMPOSE_FILE.parent / str(build["context"])).resolve()
    assert context == ROOT
    assert (context / str(build["dockerfile"])).resolve() == DOCKERFILE.resolve()


def test_dockerfile_installs_the_project_with_the_pinned_constraints() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(arguments for instruction, arguments in instructions if instruction == "RUN")
    assert re.search(r"pip install (.* )?-c constraints\.txt", runs), runs
    copied = " ".join(arguments for instruction, arguments in instructions if instruction == "COPY")
    for needed in ("pyproject.toml", "constraints.txt", "libs", "services"):
        assert needed in copied, f"the Dockerfile does not copy {needed}"
    assert (ROOT / "constraints.txt").is_file()


def test_dockerfile_default_command_is_a_console_script() -> None:
    cmds = [
        arguments
        for instruction, arguments in dockerfile_instructions()
        if instruction in {"CMD", "ENTRYPOINT"}
    ]
    assert cmds, "the Dockerfile names no command"
    for arguments in cmds:
        parsed = json.loads(arguments)
        assert isinstance(parsed, list) and parsed, f"use the exec form: {arguments}"
        assert parsed[0] in console_scripts(), f"{parsed[0]} is not in [project.scripts]"


def test_migrations_run_once_before_the_services() -> None:
    migrate = service("migrate")
    assert str(migrate.get("restart", "no")) == "no", "a one-shot job must not restart"
    assert depends_on("migrate").get("postgres") == "service_healthy"
    for name in ESS_SERVICES - {"migrate"}:
        deps = depends_on(name)
        assert deps.get("migrate") == "service_completed_successfully", name
        assert deps.get("rabbitmq") == "service_healthy", name
        assert deps.get("s3") == "service_healthy", name


def test_depends_on_targets_exist() -> None:
    for name in services():
        for dep, condition in depends_on(name).items():
            assert dep in services(), f"{name} depends on unknown service {dep}"
            assert dep != name
            assert condition in DEPENDS_CONDITIONS, f"{name} -> {dep}: {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in service(dep), f"{name} waits for {dep}'s missing health"


@pytest.mark.parametrize("name", sorted(HEALTHCHECKED))
def test_healthchecks(name: str) -> None:
    check = service(name).get("healthcheck")
    assert isinstance(check, dict), f"{name} has no healthcheck"
    test = check.get("test")
    assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"}, f"{name}: {test}"
    for key in ("interval", "timeout", "retries"):
        assert key in check, f"{name}: healthcheck without {key}"


def test_head_api_health_is_its_healthz_endpoint() -> None:
    test = service("head-api")["healthcheck"]["test"]
    assert any(":8000/healthz" in str(part) for part in test), test
    assert environment("head-api")["ESS_API_HOST"] == "0.0.0.0"


def test_edges_have_distinct_names_and_caches() -> None:
    names = [environment(edge)["ESS_EDGE_NAME"] for edge in EDGES]
    assert len(set(names)) == len(names), names
    sources = []
    for edge in EDGES:
        env = environment(edge)
        for key in ("ESS_EDGE_SITE", "ESS_EDGE_REGION", "ESS_EDGE_QUOTA_BYTES"):
            assert env.get(key), f"{edge}: {key} is not set"
        assert int(env["ESS_EDGE_QUOTA_BYTES"]) > 0
        mounts = [str(volume).split(":") for volume in service(edge).get("volumes", [])]
        cache_mounts = [mount for mount in mounts if mount[1] == env["ESS_EDGE_CACHE_DIR"]]
        assert len(cache_mounts) == 1, f"{edge}: no volume on {env['ESS_EDGE_CACHE_DIR']}"
        source = cache_mounts[0][0]
        assert source in (compose().get("volumes") or {}), f"{edge}: {source} is not a volume"
        sources.append(source)
    assert len(set(sources)) == len(sources), f"edges share a cache volume: {sources}"


def test_named_volumes_are_declared() -> None:
    declared = set(compose().get("volumes") or {})
    for name, spec in services().items():
        for volume in spec.get("volumes", []):
            source = str(volume).split(":")[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source} is not declared"


@pytest.mark.parametrize("name", sorted(ESS_SERVICES))
def test_ess_environment(name: str) -> None:
    env = environment(name)
    assert env["ESS_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in env["ESS_DATABASE_URL"]
    assert env["ESS_BUS_URL"].startswith("amqp://")
    assert "@rabbitmq:5672" in env["ESS_BUS_URL"]
    assert env["ESS_STORE_URL"] == "s3://ess-ranges"
    for key in ("ESS_S3_ENDPOINT_URL", "ESS_S3_ACCESS_KEY", "ESS_S3_SECRET_KEY", "ESS_S3_REGION"):
        assert env.get(key), f"{name}: {key} is not set"
    assert env["ESS_HEAD_URL"] == "http://head-api:8000"
    # A mistyped name would be ignored by the settings and leave their default in force.
    unknown = {key for key in env if key.startswith("ESS_")} - setting_variables()
    assert not unknown, f"{name}: not ESS settings: {sorted(unknown)}"


def test_every_variable_has_a_default_or_is_documented() -> None:
    comments = "\n".join(
        line for line in compose_text().splitlines() if line.lstrip().startswith("#")
    )
    for match in VARIABLE.finditer(compose_text()):
        name = match["name"]
        has_default = match["op"] in (":-", "-") and match["arg"] != ""
        required = match["op"] in (":?", "?")
        documented = re.search(rf"\b{re.escape(name)}\b", comments) is not None
        assert has_default or required or documented, (
            f"${{{name}}} has no default and is not described in the header comment"
        )


def test_published_ports_do_not_clash() -> None:
    published: list[str] = []
    for name, spec in services().items():
        for port in spec.get("ports", []):
            parts = interpolate(str(port)).split(":")
            assert len(parts) in (2, 3), f"{name}: publish ports as host:container, got {port}"
            host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
            published.append(f"{host_ip}:{parts[-2]}")
    clashes = [port for port, count in Counter(published).items() if count > 1]
    assert not clashes, f"host ports published twice: {clashes}"
    assert "0.0.0.0:8000" in published, "the head API is not published on port 8000"
