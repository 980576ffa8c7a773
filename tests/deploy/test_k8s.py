"""Offline checks of deploy/k8s: every manifest valid against Kubernetes' own schemas (the
`kubernetes-validate` package, strict: an unknown or misspelt field fails), every file listed
in kustomization.yaml, and the manifests held against what the code expects: the console
scripts, the settings each variable names, the probes' paths, selectors that select, ports
that exist, secrets and config that every workload takes.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ess_common.settings import EdgeSettings, HeadSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
#: A current Kubernetes release, which the package ships the schemas of.
KUBERNETES_VERSION = "1.37.0"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}


@cache
def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                found.append((path.name, doc))
    return found


def named(kind: str, name: str) -> dict[str, Any]:
    for _, doc in documents():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


def workloads() -> Iterator[dict[str, Any]]:
    for _, doc in documents():
        if doc["kind"] in WORKLOAD_KINDS:
            yield doc


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    return result


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted: dict[str, str] = selector.get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


@pytest.mark.parametrize("index", range(len(documents())))
def test_every_manifest_is_valid_for_kubernetes_strictly(index: int) -> None:
    filename, doc = documents()[index]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        raise AssertionError(f"{filename} {doc['kind']}: {where}: {exc.message}") from exc


def test_a_misspelt_field_fails_the_strict_validation() -> None:
    _, doc = next((f, d) for f, d in documents() if d["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(doc))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_file_and_only_files_that_exist() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = kustomization["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    assert len(set(listed)) == len(listed)
    assert kustomization["namespace"] == named("Namespace", "ess")["metadata"]["name"]
    images = {image["name"] for image in kustomization["images"]}
    assert {c["image"] for w in workloads() for c in containers(w)} <= images


def test_names_are_unique_per_kind() -> None:
    keys = [(doc["kind"], doc["metadata"]["name"]) for _, doc in documents()]
    assert len(keys) == len(set(keys))


def test_the_commands_are_the_projects_console_scripts() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    commands = {w["metadata"]["name"]: containers(w)[0]["command"] for w in workloads()}
    assert commands == {
        "ess-migrate": ["ess", "db", "upgrade"],
        "ess-head-api": ["ess-head-api"],
        "ess-broker": ["ess-broker"],
        "ess-notifier": ["ess-notifier"],
        "ess-edge": ["ess-edge"],
    }
    assert {command[0] for command in commands.values()} <= set(scripts)


def test_every_variable_is_a_setting() -> None:
    fields = {f"ESS_{name.upper()}" for name in HeadSettings.model_fields}
    fields |= {f"ESS_{name.upper()}" for name in EdgeSettings.model_fields}
    given = set(named("ConfigMap", "ess-config")["data"])
    given |= set(named("Secret", "ess-secrets")["stringData"])
    for workload in workloads():
        for container in containers(workload):
            given |= {e["name"] for e in container.get("env", []) if e["name"].startswith("ESS_")}
    assert given - fields == set()
    # The settings every service needs to find its database, bus and store.
    assert {"ESS_DATABASE_URL", "ESS_BUS_URL", "ESS_STORE_URL", "ESS_HEAD_URL"} <= given


def test_settings_from_the_config_and_secret_validate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in [n for n in os.environ if n.startswith("ESS_")]:
        monkeypatch.delenv(name)
    env = dict(named("ConfigMap", "ess-config")["data"])
    env |= named("Secret", "ess-secrets")["stringData"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    HeadSettings()
    edge = containers(named("StatefulSet", "ess-edge"))[0]
    for variable in edge["env"]:
        if variable["name"].startswith("ESS_") and "$(" not in variable["value"]:
            monkeypatch.setenv(variable["name"], variable["value"])
    monkeypatch.setenv("ESS_EDGE_NAME", "ess-edge-0")  # the pod's name
    # The edges' tokens, as the Secret mounted in the pod gives them.
    for edge, token in named("Secret", "ess-edge-tokens")["stringData"].items():
        (tmp_path / edge).write_text(token)
    monkeypatch.setenv("ESS_EDGE_TOKEN_DIR", str(tmp_path))
    settings = EdgeSettings()
    assert settings.edge_token is not None


def test_every_workload_takes_the_config_and_the_secret() -> None:
    for workload in workloads():
        for container in containers(workload):
            sources = container["envFrom"]
            assert {"configMapRef": {"name": "ess-config"}} in sources
            assert {"secretRef": {"name": "ess-secrets"}} in sources


def test_head_api_probes_readiness_and_liveness_apart() -> None:
    head = containers(named("Deployment", "ess-head-api"))[0]
    assert head["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert head["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert head["readinessProbe"]["httpGet"]["port"] in ports
    env = {e["name"]: e["value"] for e in head["env"]}
    assert int(env["ESS_API_PORT"]) == ports["http"]
    assert env["ESS_API_HOST"] == "0.0.0.0"


def test_head_api_scales_on_cpu_and_the_head_services_run_several_replicas() -> None:
    hpa = named("HorizontalPodAutoscaler", "ess-head-api")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "ess-head-api",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    for name in ("ess-broker", "ess-notifier"):
        assert named("Deployment", name)["spec"]["replicas"] >= 2


def test_edges_are_a_stateful_set_with_a_volume_for_the_cache() -> None:
    edges = named("StatefulSet", "ess-edge")
    claim = edges["spec"]["volumeClaimTemplates"][0]
    edge = containers(edges)[0]
    mounts = {m["name"]: m["mountPath"] for m in edge["volumeMounts"]}
    env = {e["name"]: e for e in edge["env"]}
    assert mounts[claim["metadata"]["name"]] == env["ESS_EDGE_CACHE_DIR"]["value"]
    # Each pod is its own edge, named after the pod, reachable through the headless service.
    assert env["ESS_EDGE_NAME"]["value"] == "$(POD_NAME)"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    service = named("Service", edges["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert f".{service['metadata']['name']}." in env["ESS_EDGE_URL"]["value"]
    quota = int(env["ESS_EDGE_QUOTA_BYTES"]["value"])
    size = claim["spec"]["resources"]["requests"]["storage"]
    assert size.endswith("Gi") and quota < int(size.removesuffix("Gi")) * 2**30


def test_every_long_running_pod_is_scraped_on_a_port_it_serves() -> None:
    for workload in workloads():
        if workload["kind"] == "Job":
            continue
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        ports = {p["containerPort"] for c in containers(workload) for p in c.get("ports", [])}
        assert int(annotations["prometheus.io/port"]) in ports, workload["metadata"]["name"]


def test_budgets_policies_and_services_select_pods_that_exist() -> None:
    labels = [pod_labels(w) for w in workloads()]
    for _, doc in documents():
        if doc["kind"] == "PodDisruptionBudget":
            assert any(selects(doc["spec"]["selector"], ls) for ls in labels), doc
        elif doc["kind"] == "NetworkPolicy":
            assert any(selects(doc["spec"]["podSelector"], ls) for ls in labels), doc
        elif doc["kind"] == "Service":
            selector = {"matchLabels": doc["spec"]["selector"]}
            assert any(selects(selector, ls) for ls in labels), doc
    budgets = {
        doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for _, doc in documents()
        if doc["kind"] == "PodDisruptionBudget"
    }
    long_running = {w["metadata"]["name"] for w in workloads() if w["kind"] != "Job"}
    assert budgets == long_running


def test_ingress_is_denied_unless_a_policy_lets_it_in() -> None:
    deny = named("NetworkPolicy", "ess-default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    open_ports = {
        port["port"]
        for _, doc in documents()
        if doc["kind"] == "NetworkPolicy"
        for rule in doc["spec"].get("ingress", [])
        for port in rule.get("ports", [])
    }
    served = {
        p["containerPort"] for w in workloads() for c in containers(w) for p in c.get("ports", [])
    }
    assert open_ports == served


def test_every_pod_runs_unprivileged() -> None:
    for workload in workloads():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "limits" in container["resources"]
