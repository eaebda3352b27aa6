"""The HTML report: self-contained (no URL it could fetch), and rendered by a real
headless Chromium with its charts in the DOM, no console errors and no network request."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.ledger import Ledger
from reconciler.model import GenerationState
from reconciler.planning.orphans import DesiredService, observation_document
from reconciler.present.formatting import money
from reconciler.present.report import build_report
from tests.support.cloud import observed

NOW = datetime.now(UTC).replace(microsecond=0)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _fill(ledger: Ledger) -> None:
    """Two services over ten days: rollouts, a standby, a failure, runs, an orphan."""
    start = NOW - timedelta(days=10)
    for service, generations in (("web", 3), ("api", 2)):
        for number in range(1, generations + 1):
            created = start + timedelta(days=3 * (number - 1), hours=2)
            failed = service == "api" and number == 2
            ledger.record_generation(
                env="production", service=service, number=number, provider="cloud",
                fingerprint=f"fp{number}", image=f"ami-{number:08x}", size="t3.micro",
                count=2, commit="c0ffee" * 6 + "ab", state=GenerationState.CREATING, at=created,
            )  # fmt: skip
            activated = created + timedelta(minutes=4)
            ended: datetime | None = None
            if failed:
                ledger.set_generation_state("production", service, number,
                    state=GenerationState.FAILED, at=activated, reason="failed")  # fmt: skip
                ended = activated
            else:
                ledger.set_generation_state("production", service, number,
                    state=GenerationState.ACTIVE, at=activated)  # fmt: skip
            if number < generations and not failed:
                retired = start + timedelta(days=3 * number, hours=2, minutes=4)
                ledger.set_generation_state("production", service, number,
                    state=GenerationState.STANDBY, at=retired)  # fmt: skip
                ended = retired + timedelta(hours=6)
                ledger.set_generation_state("production", service, number,
                    state=GenerationState.DESTROYED, at=ended, reason="expired")  # fmt: skip
            for slot in (1, 2):
                node_id = f"i-{service}{number}{slot}"
                ledger.record_instance(
                    id=node_id, provider="cloud", env="production", service=service,
                    generation=number, slot=slot, name=None, image="ami", size="t3.micro",
                    price_per_hour=0.0104 if service == "web" else 0.0832, state="running",
                    created_at=created, op=None,
                )  # fmt: skip
                if ended is not None:
                    ledger.set_instance_state(node_id, state="destroyed", at=ended)
    for n, result in enumerate(("changes", "no-op", "failed", "changes", "no-op")):
        run = ledger.start_run(command="daemon", commit="c0ffee" * 6 + "ab")
        ledger.finish_run(run, result=result, counts={"create": n},
                          error="boom <script>" if result == "failed" else None)  # fmt: skip
    ghost = observed("i-ghost", service="ghost", launched_at=NOW - timedelta(hours=30))
    ledger.record_observation(
        run=None, at=NOW, commit=None, billing={"cloud": ("per-second", 60.0)},
        documents={"cloud": observation_document(
            desired=[DesiredService("production", "web", "cloud", 1800),
                     DesiredService("production", "api", "cloud", 1800)],
            instances=[ghost], prices={"t3.micro": 0.0104})},
    )  # fmt: skip


@pytest.fixture
def report(tmp_path: Path) -> Path:
    with Ledger.open(tmp_path / "state") as ledger:
        _fill(ledger)
        page = build_report(ledger, now=NOW, days=14)
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def test_report_is_self_contained_and_escaped(report: Path) -> None:
    page = report.read_text()
    assert "<script" not in page.replace("&lt;script&gt;", "")
    assert "boom &lt;script&gt;" in page
    # Nothing it could fetch: no src/href attribute and no url() at all.
    assert not re.search(r"\b(src|href)\s*=", page)
    assert "url(" not in page and "@import" not in page
    assert "http:" not in page and "https:" not in page and "//" not in page.replace("<!--", "")
    for marker in ('id="timeline"', 'id="cost-chart"', 'id="orphans"', 'id="runs"', "seg-standby",
                   "seg-failed", "i-ghost"):  # fmt: skip
        assert marker in page


def test_report_shows_failed_generations_and_failed_runs(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "state") as ledger:
        _fill(ledger)
        refused = ledger.start_run(command="apply", commit=None)
        ledger.finish_run(refused, result="refused", counts={}, error="mass destroy <b>guard</b>")
        why = 'failed: health gate: exit 3: "db" <down>'
        ledger.set_generation_state("production", "api", 2, state=GenerationState.FAILED,
                                    at=NOW - timedelta(hours=1), reason=why)  # fmt: skip
        page = build_report(ledger, now=NOW, days=14)
    failed = page[page.index('id="failed-generations"'):page.index('id="failed-runs-section"')]
    assert "production/api" in failed and "g2" in failed and "ami-00000002" in failed
    assert "health gate: exit 3: &#34;db&#34; &lt;down&gt;" in failed
    assert "production/web" not in failed, "only failed generations"
    runs = page[page.index('id="failed-runs"'):page.index('id="orphans-section"')]
    assert runs.count("<tr>") == 1 + 2, "the header, the failed run and the refused one"
    assert "boom &lt;script&gt;" in runs and "mass destroy &lt;b&gt;guard&lt;/b&gt;" in runs
    assert "result-refused" in runs and "result-no-op" not in runs
    assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}Z", runs), "times with the date and zone"
    assert "<b>guard" not in page, "autoescaped: no markup from the ledger gets through"


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip(
            "headless Chromium is not installed: install Debian's `chromium` package "
            "(apt-get install chromium; .ci/run does it) to run the report's browser test"
        )
    return subprocess.run(
        [
            CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr", "--v=1", '--host-resolver-rules=MAP * ~NOTFOUND', *args,
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_report_renders_in_headless_chromium_with_charts_and_no_network(
    report: Path, tmp_path: Path
) -> None:
    done = _chromium(tmp_path, "--dump-dom", report.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert re.search(r'<svg id="timeline"[^>]*>.*<rect class="seg seg-active"', dom, re.S)
    assert re.search(r'<svg id="cost-chart"[^>]*>.*<rect class="bar"', dom, re.S)
    assert '<table id="orphans">' in dom and '<table id="runs">' in dom
    log = done.stderr
    console = [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    # Every request Chromium logs: the page must cause none. Chromium's own background
    # services (update checks, clock sync, account probes) still try to phone home in
    # headless mode despite the flags; those go to its vendor's hosts and are not the page's.
    urls = re.findall(r"NotifyBeforeURLRequest: (\S+)", log)
    from_page = [
        url for url in urls
        if not url.startswith("file:") and not _BROWSER_SERVICE.match(url)
    ]  # fmt: skip
    assert from_page == [], from_page[:5]


_BROWSER_SERVICE = re.compile(
    r"https?://([a-z0-9-]+\.)*(google\.com|googleapis\.com|gvt1\.com|gstatic\.com)/"
)


def test_report_screenshot(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    done = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,1500", report.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.stat().st_size > 10_000
    shutil.copy(shot, Path("/tmp/reconciler-report.png"))


def _demo_fleet(ledger: Ledger, now: datetime, *, old: bool = True) -> None:
    """A few minutes of a small fleet: billing minimums and started hours reach past now."""
    ledger.record_observation(
        run=None, at=now, commit=None,
        billing={"cloud": ("per-second", 60.0), "hourly": ("per-hour", 0.0)},
        documents={},
    )  # fmt: skip
    fleet = (  # id, provider, minutes ago created, minutes ago destroyed (None: running)
        ("i-a", "cloud", 4.0, 3.9), ("i-b", "cloud", 3.0, 2.95), ("i-c", "cloud", 2.0, None),
        ("i-d", "hourly", 10.0, 5.0), ("i-e", "hourly", 1.0, None),
        ("i-old", "cloud", 60 * 24 * 40.0, None),  # running since before the window
    )  # fmt: skip
    for node_id, provider, created_ago, destroyed_ago in fleet[: None if old else -1]:
        ledger.record_instance(
            id=node_id, provider=provider, env="demo", service="web", generation=1,
            slot=1, name=None, image="ami", size="t3.micro", price_per_hour=0.0104,
            state="running", created_at=now - timedelta(minutes=created_ago), op=None,
        )  # fmt: skip
        if destroyed_ago is not None:
            ledger.set_instance_state(
                node_id, state="destroyed", at=now - timedelta(minutes=destroyed_ago)
            )


def test_report_total_equals_ledger_cost_since_30_days(tmp_path: Path) -> None:
    from reconciler.present.report import gather_report

    with Ledger.open(tmp_path / "state") as ledger:
        _demo_fleet(ledger, NOW)
        data = gather_report(ledger, now=NOW, days=30)
        listed = ledger.cost_rows(by="service", since=NOW - timedelta(days=30), now=NOW)
        page = build_report(ledger, now=NOW, days=30)

    expected = sum(row["cost"] for row in listed)
    # The billing minimums of the instances stopped seconds ago end after NOW: a window
    # cut at NOW would show less than `ledger cost --since 30d` for the same ledger.
    assert expected > 0
    assert data.total_cost == pytest.approx(expected, rel=1e-9)
    assert f"{money(expected)}</" in page


def test_cost_axis_labels_are_distinct_for_small_costs(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "state") as ledger:
        _demo_fleet(ledger, NOW, old=False)  # a total of about a tenth of a cent
        page = build_report(ledger, now=NOW, days=2)
    chart = page[page.index('<svg id="cost-chart"') :]
    chart = chart[: chart.index("</svg>")]
    labels = re.findall(r'text-anchor="end">(\$[0-9.,]+)</text>', chart)
    assert len(labels) == 5
    assert len(set(labels)) == 5, labels
