"""Offline checks of the monitoring in deploy/: Prometheus's scrape config names every ESS service
of the compose file where it serves its metrics, and every metric the Grafana dashboards query
is one the code exports (`ess_common.metrics`), so a renamed metric fails here and not on a
site's empty panel. The queries themselves are run by a real Prometheus in
tests/e2e/test_prometheus.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from ess_common import metrics
from ess_common.metrics import exported_names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
#: A name in a PromQL expression: metric names, label names, functions and keywords alike.
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def dashboard_queries() -> dict[str, list[str]]:
    """Each dashboard's PromQL expressions, by file name."""
    found: dict[str, list[str]] = {}
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        found[path.name] = [
            target["expr"] for panel in board["panels"] for target in panel.get("targets", [])
        ]
    return found


def metric_names(expression: str) -> set[str]:
    """The ESS metrics an expression reads (label values, label lists and range selectors
    removed first)."""
    bare = _LABEL_LISTS.sub("", _STRINGS.sub('""', expression))
    bare = re.sub(r"\{[^}]*\}", "", re.sub(r"\[[^\]]*\]", "", bare))
    return {name for name in _IDENTIFIER.findall(bare) if name.startswith("ess_")}


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return loaded


def test_there_are_dashboards_with_queries() -> None:
    assert {p.name for p in DASHBOARDS} >= {"ess-overview.json", "ess-edges.json"}
    for name, queries in dashboard_queries().items():
        assert len(queries) >= 10, name


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_queried_metric_is_exported_by_the_code(path: Path) -> None:
    exported = exported_names()
    for expression in dashboard_queries()[path.name]:
        names = metric_names(expression)
        assert names, f"{path.name}: no ESS metric in {expression!r}"
        unknown = names - exported
        assert not unknown, f"{path.name}: {expression!r} reads {sorted(unknown)}, not exported"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboards_use_the_provisioned_datasource(path: Path) -> None:
    board = json.loads(path.read_text())
    provisioned = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    uids = {source["uid"] for source in provisioned["datasources"]}
    assert board["uid"] and board["title"]
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] in uids, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids, panel["title"]


def test_prometheus_scrapes_every_ess_service_where_it_serves_metrics() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    services = compose()["services"]
    expected = {f"head-api:{services['head-api']['environment']['ESS_API_PORT']}"}
    for name in ("broker", "notifier", "edge-a", "edge-b"):
        env = services[name]["environment"]
        assert env["ESS_METRICS_HOST"] == "0.0.0.0", name
        expected.add(f"{name}:{env['ESS_METRICS_PORT']}")
    assert targets == expected
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]


def test_prometheus_accepts_the_scrape_config() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is not installed"
    checked = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_ess_metric_is_named_with_its_unit() -> None:
    for metric in metrics.ALL:
        (family,) = metric.describe()
        assert family.name.startswith("ess_"), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        if family.documentation.lower().startswith("bytes") or " bytes " in family.documentation:
            assert "_bytes" in family.name, family.name
