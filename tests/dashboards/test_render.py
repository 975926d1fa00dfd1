"""``prewarm dashboards render``: the Grafana panels drawn as static HTML from a real Prometheus.

The Prometheus here is backfilled (``promtool tsdb create-blocks-from openmetrics``) with the last
three hours of the daemon's forecast series (``prewarm_observed_rps``, ``prewarm_forecast_rps``)
and its plan size (``prewarm_plan_actions``) for two models, one of them with regex
metacharacters in its name; every other panel's series is absent, so those panels must say
"no data". ``test_dashboards.py`` renders against a Prometheus scraping a live daemon and agent.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from html import escape
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from common.errors import InvalidInput
from prewarm.cli.main import app
from prewarm.dashboards.grafana import Panel, Query, all_dashboards, dashboard
from prewarm.dashboards.render import expand, legend_name, render_report
from prewarm.dashboards.svg import ChartLine, line_chart
from prewarm.dashboards.units import format_value
from tests.harness.prometheus import RunningPrometheus, free_port, prometheus_with_openmetrics

MODELS = ("chat-small", "llama-3.1-8b")
STEP_S = 60
HISTORY_STEPS = 180
FORECAST_PANELS = ("Forecast vs actual (15 min ahead, p10-p90 band)", "Forecast horizons (mean)")
PLAN_PANEL = "Plan size by action type"


def _openmetrics(end_s: float) -> str:
    """Three hours of gauges, one sample a minute, the last one a minute before ``end_s``."""
    stamps = (end_s // STEP_S) * STEP_S - STEP_S * np.arange(HISTORY_STEPS, 0, -1)
    minutes = np.arange(HISTORY_STEPS)
    families: dict[str, list[list[str]]] = {
        "prewarm_observed_rps": [],
        "prewarm_forecast_rps": [],
        "prewarm_plan_actions": [],
    }
    for row, model in enumerate(MODELS):
        rate = 10 * (row + 1) + 5 * np.sin(2 * np.pi * minutes / 60)
        families["prewarm_observed_rps"].append(_series(f'{{model="{model}"}}', stamps, rate))
        for horizon in ("15m", "30m"):
            for quantile, scale in (("mean", 1.0), ("0.1", 0.8), ("0.9", 1.2)):
                labels = f'{{model="{model}",quantile="{quantile}",horizon="{horizon}"}}'
                families["prewarm_forecast_rps"].append(_series(labels, stamps, rate * scale))
    for action, count in (("scale", 2.0), ("preload", 3.0)):
        values = np.full(HISTORY_STEPS, count)
        families["prewarm_plan_actions"].append(_series(f'{{type="{action}"}}', stamps, values))
    lines = []
    for name, series in families.items():
        lines.append(f"# TYPE {name} gauge")
        lines += [f"{name}{sample}" for samples in series for sample in samples]
    return "\n".join([*lines, "# EOF"]) + "\n"


def _series(labels: str, stamps: np.ndarray, values: np.ndarray) -> list[str]:
    return [f"{labels} {v:.3f} {t:.0f}" for t, v in zip(stamps, values, strict=True)]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPrometheus]:
    workdir = tmp_path_factory.mktemp("prometheus")
    source = workdir / "history.om.txt"
    source.write_text(_openmetrics(time.time()), encoding="utf-8")
    with prometheus_with_openmetrics(source, workdir) as server:
        yield server


def _prewarm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prewarm", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _panels(page: str) -> dict[str, str]:
    """Panel title -> the HTML of its section."""
    found = {}
    for section in re.findall(r'<section class="panel".*?</section>', page, flags=re.S):
        title = re.search(r"<h2>(.*?)</h2>", section)
        assert title is not None
        found[title.group(1)] = section
    return found


def _drawn(section: str) -> int:
    """Polylines and lone points drawn for series."""
    return len(re.findall(r'<(?:polyline|circle) [^>]*class="series"', section))


@pytest.mark.prometheus
def test_every_panel_is_on_its_page_and_those_with_series_are_drawn(
    prometheus: RunningPrometheus, tmp_path: Path
) -> None:
    out = tmp_path / "html"
    process = _prewarm(
        "dashboards", "render", "--prometheus", prometheus.url, "--out", str(out),
        "--range", "3h", "--step", "60s",
    )  # fmt: skip
    assert process.returncode == 0, process.stderr
    assert "0 failed" in (out / "index.html").read_text(encoding="utf-8")
    for name, document in all_dashboards().items():
        page = (out / document["uid"] / "index.html").read_text(encoding="utf-8")
        assert str(out / document["uid"] / "index.html") in process.stdout
        sections = _panels(page)
        # The page names every panel of the Grafana JSON, in its order, and shows its PromQL.
        assert list(sections) == [escape(panel["title"]) for panel in document["panels"]], name
        for panel in document["panels"]:
            section = sections[escape(panel["title"])]
            assert 'class="error"' not in section
            for target in panel["targets"]:
                assert escape(expand(target["expr"], {"model": ".*"})) in section
            if panel["title"] in (*FORECAST_PANELS, PLAN_PANEL):
                assert _drawn(section) > 0, panel["title"]
                assert "no data" not in section
            else:
                assert _drawn(section) == 0, panel["title"]
                assert '<p class="nodata">no data</p>' in section, panel["title"]
    forecast = (out / "prewarm-forecast" / "index.html").read_text(encoding="utf-8")
    assert "model = All (chat-small, llama-3.1-8b)" in forecast
    versus = _panels(forecast)[escape(FORECAST_PANELS[0])]
    # Four targets, two models: actual, forecast, p10 and p90 of each, named by legendFormat.
    for legend in ("actual", "forecast", "p10", "p90"):
        for model in MODELS:
            assert f"{legend} {model} <small>" in versus
    assert "requests / s" in versus  # the y axis title of the reqps unit
    assert "time (UTC)" in versus
    assert _drawn(versus) == 8
    assert "3 of 16 panels drawn, 13 with no data" in process.stderr


@pytest.mark.prometheus
def test_model_option_selects_its_series_and_escapes_the_regex(
    prometheus: RunningPrometheus, tmp_path: Path
) -> None:
    report = render_report(
        prometheus.url, tmp_path, range_s=3 * 3600, step_s=60, models=["llama-3.1-8b"]
    )
    assert not report.failed
    page = report.pages[0].read_text(encoding="utf-8")
    assert "model = llama-3.1-8b" in page
    # 3.1 matched literally: the dot is escaped for the regex and again for the PromQL string.
    assert escape('model=~"llama-3\\\\.1-8b"') in page
    versus = _panels(page)[escape(FORECAST_PANELS[0])]
    assert _drawn(versus) == 4
    assert "actual llama-3.1-8b" in versus
    assert "chat-small" not in versus


@pytest.mark.prometheus
def test_a_model_prometheus_does_not_have_draws_no_data(
    prometheus: RunningPrometheus, tmp_path: Path
) -> None:
    report = render_report(prometheus.url, tmp_path, range_s=3600, step_s=60, models=["nope"])
    page = report.pages[0].read_text(encoding="utf-8")
    assert "model = nope (Prometheus has no nope)" in page
    assert '<p class="nodata">no data</p>' in _panels(page)[escape(FORECAST_PANELS[0])]
    # A panel without $model still draws.
    assert _drawn(_panels(report.pages[1].read_text(encoding="utf-8"))[PLAN_PANEL]) > 0


@pytest.mark.prometheus
def test_a_query_prometheus_rejects_is_one_line_in_its_panel(
    prometheus: RunningPrometheus, tmp_path: Path
) -> None:
    panels = (
        Panel("Broken", (Query("sum(prewarm_plan_actions", "x"), Query("up", "up"))),
        Panel("Plan", (Query("sum by (type) (prewarm_plan_actions)", "{{type}}"),)),
    )
    documents = {"t.json": dashboard("t", "test", panels, with_model=False)}
    report = render_report(prometheus.url, tmp_path, range_s=3600, step_s=60, documents=documents)
    assert [(f.dashboard, f.panel) for f in report.failed] == [("test", "Broken")]
    sections = _panels(report.pages[0].read_text(encoding="utf-8"))
    errors = re.findall(r'<p class="error">(.*?)</p>', sections["Broken"])
    assert len(errors) == 1
    assert errors[0].startswith("query A failed: Prometheus rejected the query (bad_data: ")
    assert "no data" in sections["Broken"]  # B answered, with nothing: both facts are shown
    assert _drawn(sections["Plan"]) == 2


def test_unreachable_prometheus_fails_every_panel_and_exits_1(tmp_path: Path) -> None:
    out = tmp_path / "html"
    url = f"http://127.0.0.1:{free_port()}"
    process = _prewarm(
        "dashboards", "render", "--prometheus", url, "--out", str(out), "--json", "-"
    )
    assert process.returncode == 1, process.stderr
    document = json.loads(process.stdout)
    assert document["panels"] == len(document["failed"]) == 16
    assert document["failed"][0]["error"].startswith("query A, B, C, D failed: cannot reach")
    assert process.stderr.count("\n") == 1
    assert process.stderr.startswith("prewarm: error: every panel failed (16 of 16): ")
    assert "connection refused" in process.stderr
    for document in all_dashboards().values():
        page = (out / document["uid"] / "index.html").read_text(encoding="utf-8")
        sections = _panels(page)
        assert len(sections) == len(document["panels"])
        for section in sections.values():
            errors = re.findall(r'<p class="error">(.*?)</p>', section)
            assert len(errors) == 1
            assert f"cannot reach Prometheus at {url}: connection refused" in errors[0]
            assert "no data" not in section


def test_a_bad_url_exits_2_in_one_line_before_any_query(tmp_path: Path) -> None:
    out = tmp_path / "html"
    process = _prewarm("dashboards", "render", "--prometheus", "localhost:9090", "--out", str(out))
    assert process.returncode == 2, process.stderr
    assert process.stderr == (
        "prewarm: error: --prometheus must be an http:// or https:// URL with a host, e.g. "
        "http://127.0.0.1:9090; got 'localhost:9090'\n"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--prometheus", "http://"), "--prometheus must be an http:// or https:// URL"),
        (("--prometheus", "http://h:port"), "--prometheus has an invalid port"),
        (("--prometheus", "http://h", "--range", "6x"), "cannot parse duration '6x'"),
        (("--prometheus", "http://h", "--step", "0"), "--range and --step must be > 0"),
        (("--prometheus", "http://h", "--range", "30d", "--step", "1s"), "use a longer --step"),
        (("--prometheus", "http://h", "--json", "/no/such/dir/x.json"), "its directory does not"),
    ],
)
def test_bad_arguments_are_invalid_input(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    out = tmp_path / "html"
    result = CliRunner().invoke(app, ["dashboards", "render", "--out", str(out), *args])
    assert isinstance(result.exception, InvalidInput), result.output
    assert message in str(result.exception)
    assert not out.exists()


def test_template_variables_and_legends() -> None:
    assert expand('x{model=~"$model"} + y{m="${model}"} + [[model]] + $other', {"model": "a"}) == (
        'x{model=~"a"} + y{m="a"} + a + $other'
    )
    assert legend_name("p90 {{model}} +{{ horizon }}", {"model": "m", "horizon": "15m"}) == (
        "p90 m +15m"
    )
    assert legend_name("{{missing}}x", {}) == "x"
    assert legend_name("", {"__name__": "up", "job": "p"}) == 'up{job="p"}'
    assert legend_name("", {}) == "{}"


def test_units_as_grafana_prints_them() -> None:
    assert format_value(0.25, "percentunit") == "25%"
    assert format_value(3 * 1024**3, "bytes") == "3 GiB"
    assert format_value(1536, "Bps") == "1.5 KiB/s"
    assert format_value(0.02, "s") == "20 ms"
    assert format_value(12_500, "reqps") == "12.5k req/s"
    assert format_value(0, "short") == "0"


def test_a_line_breaks_at_missing_and_non_finite_samples() -> None:
    times = np.array([0.0, 60, 120, 180, 360, 420, 480])
    values = np.array([1.0, 2, np.nan, 3, 4, 5, np.inf])
    svg = line_chart(
        [ChartLine("s", "#000", times, values)], unit="short", start_s=0, end_s=480, step_s=60
    )
    # [0, 60] joined; 120 is NaN; 180 alone (360 is three steps later); [360, 420]; inf dropped.
    assert len(re.findall(r"<polyline ", svg)) == 2
    assert len(re.findall(r"<circle ", svg)) == 1
