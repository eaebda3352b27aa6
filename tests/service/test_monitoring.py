"""The monitoring kit: Prometheus alert rules checked and unit-tested by promtool
(Debian's `prometheus` package, installed by .ci/run), and a Grafana dashboard whose
queries, like the rules', use only metrics the daemon exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from reconciler.ledger import Ledger
from reconciler.service.metrics import Metrics

KIT = Path(__file__).resolve().parents[2] / "monitoring"
RULES = KIT / "prometheus" / "reconciler-alerts.yml"
RULE_TESTS = KIT / "prometheus" / "reconciler-alerts.test.yml"
DASHBOARD = KIT / "grafana" / "reconciler-dashboard.json"
OUR_METRIC = re.compile(r"\breconciler_[a-z0-9_]+\b")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus); CI installs it")
    return found


def exported_names(tmp_path: Path) -> set[str]:
    """Every series name the daemon's registry can expose, by metric type."""
    with Ledger.open(tmp_path / "state") as ledger:
        metrics = Metrics(ledger)
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",),
                "histogram": ("_bucket", "_count", "_sum", "_created")}  # fmt: skip
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    document = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in document["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in document["templating"]["list"]]
    return queries


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    tool = promtool()
    checked = subprocess.run([tool, "check", "rules", str(RULES)],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout
    tested = subprocess.run([tool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_alerts_cover_what_the_operator_must_act_on() -> None:
    names = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    }
    assert names == {
        "ReconcilerServiceDown", "ReconcilerServiceHeld", "ReconcilerRolloutFailed",
        "ReconcilerNoSuccessfulPass", "ReconcilerOrphansCost", "ReconcilerRequestUnanswered",
        "ReconcilerSwitchWaiting",
    }  # fmt: skip


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_queries_use_only_metrics_the_daemon_exports(tmp_path: Path, source: str) -> None:
    exported = exported_names(tmp_path)
    assert {"reconciler_build_info", "reconciler_service_held", "reconciler_runs_total"} <= exported
    expressions = rule_expressions() if source == "rules" else dashboard_expressions()
    assert expressions
    for expression in expressions:
        used = set(OUR_METRIC.findall(expression))
        assert used, f"{expression!r} reads no reconciler metric"
        assert used <= exported, f"{expression!r} reads {sorted(used - exported)}"


def test_the_dashboard_shows_held_down_desired_and_running() -> None:
    document = json.loads(DASHBOARD.read_text())
    assert document["uid"] and document["title"] == "reconciler"
    ids = [p["id"] for p in document["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    used = set(OUR_METRIC.findall(" ".join(dashboard_expressions())))
    assert {
        "reconciler_service_held", "reconciler_service_desired_instances",
        "reconciler_service_running_instances", "reconciler_failed_generations",
        "reconciler_orphans_hourly_cost_dollars", "reconciler_build_info",
    } <= used  # fmt: skip
