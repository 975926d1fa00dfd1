"""Renders the Grafana dashboards as static HTML pages from a live Prometheus.

Owns: reading the dashboard documents of :mod:`prewarm.dashboards.grafana` (the very JSON Grafana
imports, so a page cannot drift from it), expanding their template variables, running every
target as a range query, naming series by the target's ``legendFormat``, and writing
``<out>/<dashboard uid>/index.html`` per dashboard plus ``<out>/index.html`` linking them.
Must not: stop at a failing query: the panel shows the failure in one line and the rest go on;
the caller decides what to do with :attr:`RenderReport.failed` (the CLI exits 1 only when every
panel failed).

Template variables, as Grafana resolves them for a fresh page load:
- A ``query`` variable defined as ``label_values(<metric>, <label>)`` takes the label's values on
  that metric (``/api/v1/label/<label>/values?match[]=<metric>``); they are printed in the header.
- Values chosen by the caller (``--model``) are regex-escaped and joined as ``(a|b)``: the
  dashboards match them with ``=~`` inside a PromQL string, so a regex metacharacter is escaped
  and every backslash doubled (``llama-3.1`` becomes ``llama-3\\\\.1``).
- Otherwise a variable with "All" selected takes its ``allValue`` (``.*`` here), as Grafana does;
  without one, the alternation of every value.
- ``$name``, ``${name}`` and ``[[name]]`` are replaced; other ``$`` words are left to Prometheus.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from common.durations import format_duration
from common.errors import InvalidInput, PrewarmError
from prewarm.dashboards.grafana import all_dashboards
from prewarm.dashboards.page import PageHeader, PanelView, dashboard_html, index_html
from prewarm.dashboards.prometheus import PrometheusHttp, Series
from prewarm.dashboards.svg import ChartLine, line_chart

DEFAULT_RANGE_S = 6 * 3600.0
"""The dashboards' own default time range (``now-6h`` to ``now``)."""
DEFAULT_STEP_S = 60.0
MAX_POINTS = 11_000
"""Prometheus refuses a range query with more points per series than this."""

PALETTE = (
    "#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A9", "#705DA0",
    "#508642", "#CCA300", "#447EBC", "#C15C17", "#890F02", "#0A437C", "#6D1F62", "#584477",
)  # fmt: skip
"""Grafana's classic series colours, in its order."""

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*$")
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_REGEX_META = re.compile(r"([\\.^$*+?()\[\]{}|])")


@dataclass(frozen=True)
class PanelFailure:
    """A panel with at least one failing query, and the first failure's sentence."""

    dashboard: str
    panel: str
    error: str

    def __str__(self) -> str:
        return f"{self.dashboard}: {self.panel}: {self.error}"


@dataclass(frozen=True)
class RenderReport:
    """What a render wrote and what failed."""

    pages: list[Path]
    """``<out>/<uid>/index.html`` per dashboard, in the order of the dashboards."""
    index: Path
    panels: int
    empty: list[str]
    """``"<dashboard>: <panel>"`` for each panel whose queries answered with no data."""
    failed: list[PanelFailure]
    """Each panel with a failing query."""


def render_dashboards(
    prometheus_url: str,
    out_dir: Path,
    *,
    range_s: float = DEFAULT_RANGE_S,
    step_s: float = DEFAULT_STEP_S,
    models: Sequence[str] = (),
) -> list[Path]:
    """Write one self-contained ``index.html`` per dashboard under ``out_dir``; their paths.

    A failing query shows as a line in its panel and does not raise; bad arguments (URL, range,
    step, an ``out_dir`` that is a file) raise :class:`InvalidInput` before any query. For the
    failures themselves, use :func:`render_report`.
    """
    report = render_report(prometheus_url, out_dir, range_s=range_s, step_s=step_s, models=models)
    return report.pages


def render_report(
    prometheus_url: str,
    out_dir: Path,
    *,
    range_s: float = DEFAULT_RANGE_S,
    step_s: float = DEFAULT_STEP_S,
    models: Sequence[str] = (),
    now_s: float | None = None,
    client: PrometheusHttp | None = None,
    documents: Mapping[str, dict[str, Any]] | None = None,
) -> RenderReport:
    """:func:`render_dashboards`, returning what failed and what had no data.

    ``now_s`` (default: the wall clock) ends the range; ``client`` is the Prometheus boundary
    (default: :class:`PrometheusHttp` on ``prometheus_url``); ``documents`` (file name ->
    Grafana dashboard JSON) defaults to every committed dashboard.
    """
    if not range_s > 0 or not step_s > 0:
        raise InvalidInput(f"--range and --step must be > 0, got {range_s:g} s and {step_s:g} s")
    if range_s / step_s > MAX_POINTS:
        raise InvalidInput(
            f"--range {format_duration(range_s)} at --step {step_s:g}s is "
            f"{range_s / step_s:.0f} points per series; Prometheus allows {MAX_POINTS}: "
            "use a longer --step"
        )
    client = client if client is not None else PrometheusHttp(prometheus_url)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInput(f"--out {out_dir} exists and is not a directory")
    documents = documents if documents is not None else all_dashboards()
    end_s = time.time() if now_s is None else now_s
    start_s = end_s - range_s
    window = _Window(start_s=start_s, end_s=end_s, step_s=step_s)
    out_dir.mkdir(parents=True, exist_ok=True)
    uids = [str(doc.get("uid") or Path(name).stem) for name, doc in documents.items()]
    titles = [str(doc.get("title", uid)) for doc, uid in zip(documents.values(), uids, strict=True)]
    pages: list[Path] = []
    empty: list[str] = []
    failed: list[PanelFailure] = []
    rows = []
    panel_count = 0
    for document, uid, title in zip(documents.values(), uids, titles, strict=True):
        values, notes = _variables(document, client, chosen={"model": list(models)})
        views = [_panel_view(panel, values, client, window) for panel in document.get("panels", [])]
        panel_count += len(views)
        for view in views:
            if view.errors:
                failed.append(PanelFailure(title, view.title, view.errors[0]))
            elif view.chart_svg is None:
                empty.append(f"{title}: {view.title}")
        others = [
            (other, f"../{other_uid}/index.html")
            for other, other_uid in zip(titles, uids, strict=True)
            if other_uid != uid
        ]
        links = (("all dashboards", "../index.html"), *others)
        header = PageHeader(
            title=title,
            prometheus_url=client.url,
            time_range=_describe(window),
            variables=tuple(notes),
            links=links,
        )
        page = out_dir / uid / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(dashboard_html(header, views), encoding="utf-8")
        pages.append(page)
        drawn = sum(1 for view in views if view.chart_svg is not None)
        broken = sum(1 for view in views if view.errors)
        rows.append(
            (title, f"{uid}/index.html", f"{drawn} of {len(views)} panels drawn, {broken} failed")
        )
    index = out_dir / "index.html"
    index.write_text(index_html("prewarm dashboards", rows), encoding="utf-8")
    return RenderReport(pages=pages, index=index, panels=panel_count, empty=empty, failed=failed)


@dataclass(frozen=True)
class _Window:
    start_s: float
    end_s: float
    step_s: float


def _describe(window: _Window) -> str:
    def stamp(t: float) -> str:
        return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")

    return (
        f"{stamp(window.start_s)} to {stamp(window.end_s)} UTC "
        f"({format_duration(window.end_s - window.start_s)}, step {window.step_s:g} s)"
    )


def _variables(
    document: Mapping[str, Any], client: PrometheusHttp, *, chosen: Mapping[str, list[str]]
) -> tuple[dict[str, str], list[str]]:
    """Variable name -> the text that replaces it in queries, and one header line per variable."""
    values: dict[str, str] = {}
    notes: list[str] = []
    for variable in document.get("templating", {}).get("list", []):
        name = str(variable.get("name", ""))
        if variable.get("type") != "query" or not name:
            continue  # the datasource variable: this page has exactly one Prometheus
        definition = str(variable.get("definition", ""))
        found: list[str] = []
        problem = ""
        parsed = _LABEL_VALUES.match(definition)
        if parsed is None:
            problem = f"cannot resolve {definition!r} (only label_values(...) is supported)"
        else:
            metric, label = parsed.group(1), parsed.group(2)
            try:
                found = client.label_values(label, match=metric)
            except PrewarmError as error:
                problem = f"label values unavailable: {error}"
        picked = chosen.get(name) or []
        if picked:
            values[name] = _alternation(picked)
            note = f"{name} = {', '.join(picked)}"
            missing = [value for value in picked if found and value not in found]
            if missing:
                note += f" (Prometheus has no {', '.join(missing)})"
        elif variable.get("includeAll") and variable.get("allValue") is not None:
            values[name] = str(variable["allValue"])
            note = f"{name} = All ({', '.join(found) if found else 'no values yet'})"
        elif found:
            values[name] = _alternation(found) if variable.get("multi") else _escape(found[0])
            note = f"{name} = {', '.join(found) if variable.get('multi') else found[0]}"
        else:
            values[name] = ".*"
            note = f"{name} = .* (no values yet)"
        notes.append(note + (f"; {problem}" if problem else ""))
    return values, notes


def _escape(value: str) -> str:
    """``value`` as a regex literal inside a PromQL double-quoted string."""
    regex = _REGEX_META.sub(r"\\\1", value)
    return regex.replace("\\", "\\\\").replace('"', '\\"')


def _alternation(values: Sequence[str]) -> str:
    escaped = [_escape(value) for value in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def expand(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with each known template variable replaced by its value."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        return values.get(name, match.group(0))

    return _VARIABLE.sub(replace, expr)


def legend_name(legend: str, labels: Mapping[str, str]) -> str:
    """A series' name from a Grafana ``legendFormat`` (``{{label}}`` is that label's value);
    without a legend, the series' label set as PromQL prints it."""
    if legend.strip():
        return _LEGEND.sub(lambda match: labels.get(match.group(1), ""), legend)
    name = labels.get("__name__", "")
    rest = ", ".join(
        f'{key}="{value}"' for key, value in sorted(labels.items()) if key != "__name__"
    )
    return f"{name}{{{rest}}}" if rest or not name else name


def _panel_view(
    panel: Mapping[str, Any], values: Mapping[str, str], client: PrometheusHttp, window: _Window
) -> PanelView:
    unit = str(panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short"))
    lines: list[ChartLine] = []
    queries: list[tuple[str, str]] = []
    failures: dict[str, list[str]] = {}
    answered = False
    for target in panel.get("targets", []):
        ref_id = str(target.get("refId", "?"))
        expr = expand(str(target.get("expr", "")), values)
        queries.append((ref_id, expr))
        try:
            found: list[Series] = client.query_range(
                expr, start_s=window.start_s, end_s=window.end_s, step_s=window.step_s
            )
        except PrewarmError as error:
            failures.setdefault(str(error), []).append(ref_id)
            continue
        answered = True
        for series in found:
            color = PALETTE[len(lines) % len(PALETTE)]
            name = legend_name(str(target.get("legendFormat", "")), series.labels)
            lines.append(ChartLine(name, color, series.times_s, series.values))
    title = str(panel.get("title", ""))
    has_points = any(bool(np.isfinite(line.values).any()) for line in lines)
    chart = (
        line_chart(
            lines,
            unit=unit,
            start_s=window.start_s,
            end_s=window.end_s,
            step_s=window.step_s,
            title=title,
        )
        if has_points
        else None
    )
    errors = tuple(
        f"query {', '.join(refs)} failed: {message}" for message, refs in failures.items()
    )
    return PanelView(
        title=title,
        description=str(panel.get("description", "")),
        width=int(panel.get("gridPos", {}).get("w", 12)),
        chart_svg=chart,
        lines=tuple(lines),
        unit=unit,
        errors=errors,
        queries=tuple(queries),
        answered=answered,
    )
