"""Writes the Grafana dashboards (committed JSON) from the one description of their panels.

The panels live in :mod:`prewarm.dashboards.grafana` (installed with the package, so
``prewarm dashboards render`` draws the same queries); this script only writes the files. Run
``python dashboards/build.py`` after changing a panel; ``tests/dashboards`` checks that the
committed JSON is what this script writes and that every query parses and returns data against a
real Prometheus scraping a running daemon and GPU agent.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prewarm.dashboards.grafana import (
    ACTION_PANELS,
    AGENT_PANELS,
    DATASOURCE,
    FORECAST_PANELS,
    MODEL,
    Panel,
    Query,
    all_dashboards,
    dashboard,
    render,
)

__all__ = [
    "ACTION_PANELS",
    "AGENT_PANELS",
    "DATASOURCE",
    "FORECAST_PANELS",
    "MODEL",
    "Panel",
    "Query",
    "all_dashboards",
    "dashboard",
    "main",
    "render",
]

HERE = Path(__file__).resolve().parent

CHART_COPIES = HERE.parent / "charts" / "prewarm" / "dashboards"
"""helm reads only files inside the chart: the chart carries a copy of every dashboard."""


def main() -> int:
    """Write every dashboard next to this script and its copy into the chart; print what
    changed."""
    for name, document in all_dashboards().items():
        text = render(document)
        for path in (HERE / name, CHART_COPIES / name):
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
                print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
