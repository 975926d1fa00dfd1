"""The self-contained HTML of one dashboard (and of the index linking them).

Owns: the page layout (Grafana's 24-column grid, each panel as wide as its ``gridPos.w``), each
panel's title, description, chart or "no data", legend (one entry per series with its last value),
one line per failing query, and the PromQL that was run, shown under the chart so it can be pasted
into Prometheus. Everything is inline (CSS, SVG): the file opens from disk with no network.
Must not: query, or decide what failed (:mod:`prewarm.dashboards.render` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np

from prewarm.dashboards.svg import ChartLine
from prewarm.dashboards.units import format_value

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 16px; background: #f6f7f9; color: #1f2328; }
header p { margin: 2px 0; color: #555; }
nav a { margin-right: 12px; }
.grid { display: grid; grid-template-columns: repeat(24, 1fr); gap: 12px; margin-top: 12px; }
.panel { background: #fff; border: 1px solid #d8dce1; border-radius: 4px; padding: 8px 12px;
  min-width: 0; }
.panel h2 { font-size: 15px; margin: 0 0 4px 0; }
.panel .description { font-size: 12px; color: #555; margin: 0 0 4px 0; }
.panel svg { width: 100%; height: auto; display: block; }
svg .plot { fill: #fff; stroke: #c8ccd1; }
svg .grid { stroke: #eceef1; }
svg .tick { font-size: 10px; fill: #555; }
svg .axis { font-size: 11px; fill: #333; }
svg polyline.series { fill: none; stroke-width: 1.5; }
.nodata { color: #888; font-style: italic; padding: 24px 0; text-align: center; }
.error { color: #b42318; font-size: 13px; margin: 4px 0; }
.legend { list-style: none; padding: 0; margin: 4px 0; font-size: 12px; }
.legend li { display: inline-block; margin-right: 14px; }
.swatch { display: inline-block; width: 10px; height: 3px; vertical-align: middle;
  margin-right: 4px; }
pre.promql { background: #f0f2f5; font-size: 11px; padding: 6px; margin: 4px 0 0 0;
  white-space: pre-wrap; word-break: break-all; }
"""


@dataclass(frozen=True)
class PanelView:
    """What one panel shows: already queried, named and coloured."""

    title: str
    description: str
    width: int
    chart_svg: str | None
    """The chart, or ``None`` when no query returned a finite sample."""
    lines: tuple[ChartLine, ...]
    unit: str
    errors: tuple[str, ...]
    """One sentence per distinct failure, naming the queries (refIds) it hit."""
    queries: tuple[tuple[str, str], ...]
    """(refId, PromQL as run) per target."""
    answered: bool
    """Whether at least one query answered (so "no data" is a fact, not a failure)."""


@dataclass(frozen=True)
class PageHeader:
    """The dashboard-wide facts printed above the panels."""

    title: str
    prometheus_url: str
    time_range: str
    variables: tuple[str, ...]
    links: tuple[tuple[str, str], ...]
    """(text, relative href) to the other dashboards and the index."""


def dashboard_html(header: PageHeader, panels: Sequence[PanelView]) -> str:
    """The whole page of one dashboard."""
    body = [
        "<header>",
        f"<h1>{escape(header.title)}</h1>",
        f"<p>Prometheus: <code>{escape(header.prometheus_url)}</code></p>",
        f"<p>{escape(header.time_range)}</p>",
        *(f'<p class="variable">{escape(text)}</p>' for text in header.variables),
        "<nav>",
        *(f'<a href="{escape(href)}">{escape(text)}</a>' for text, href in header.links),
        "</nav>",
        "</header>",
        '<main class="grid">',
        *(_panel(panel) for panel in panels),
        "</main>",
    ]
    return _document(header.title, "\n".join(body))


def index_html(title: str, rows: Sequence[tuple[str, str, str]]) -> str:
    """A page linking each dashboard: (title, relative href, one-line summary) per row."""
    items = "\n".join(
        f'<li><a href="{escape(href)}">{escape(name)}</a>: {escape(summary)}</li>'
        for name, href, summary in rows
    )
    return _document(title, f"<h1>{escape(title)}</h1>\n<ul>\n{items}\n</ul>")


def _document(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def _panel(panel: PanelView) -> str:
    parts = [
        f'<section class="panel" style="grid-column: span {max(1, min(24, panel.width))}">',
        f"<h2>{escape(panel.title)}</h2>",
    ]
    if panel.description:
        parts.append(f'<p class="description">{escape(panel.description)}</p>')
    parts.extend(f'<p class="error">{escape(error)}</p>' for error in panel.errors)
    if panel.chart_svg is not None:
        parts.append(panel.chart_svg)
        parts.append('<ul class="legend">')
        for line in panel.lines:
            finite = line.values[np.isfinite(line.values)]
            last = format_value(float(finite[-1]), panel.unit) if finite.size else "-"
            parts.append(
                f'<li><span class="swatch" style="background:{line.color}"></span>'
                f"{escape(line.name)} <small>(last {escape(last)})</small></li>"
            )
        parts.append("</ul>")
    elif panel.answered:
        parts.append('<p class="nodata">no data</p>')
    for ref_id, expr in panel.queries:
        parts.append(f'<pre class="promql">{escape(ref_id)}: {escape(expr)}</pre>')
    parts.append("</section>")
    return "\n".join(parts)
