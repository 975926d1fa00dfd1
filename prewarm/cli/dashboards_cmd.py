"""``prewarm dashboards render``: the Grafana dashboards as static HTML, from a live Prometheus.

Writes ``<out>/index.html`` and one self-contained page per dashboard, each panel drawn from the
same PromQL as the committed Grafana JSON. A failing query is a line in its panel; stderr gets one
summary line. Exit 0 when at least one panel's queries answered (data or "no data"), 1 when every
panel failed (Prometheus down, wrong URL path), 2 on bad arguments (URL, range, step), before any
query.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from common.durations import parse_duration_s
from common.errors import InvalidInput, TemporaryError
from prewarm.cli.output import write_json
from prewarm.dashboards.render import RenderReport, render_report

dashboards_app = typer.Typer(
    name="dashboards",
    help="The Grafana dashboards without Grafana.",
    no_args_is_help=True,
)


@dashboards_app.command("render")
def render(
    prometheus: Annotated[
        str, typer.Option("--prometheus", help="Prometheus base URL, e.g. http://127.0.0.1:9090.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Directory for the pages (created).")],
    range_text: Annotated[
        str, typer.Option("--range", help="Time range ending now, e.g. 6h, 30m, 2d.")
    ] = "6h",
    step_text: Annotated[
        str, typer.Option("--step", help="Resolution of the range queries, e.g. 60s, 5m.")
    ] = "60s",
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Value of $model (repeatable); default: All."),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Write what was drawn and what failed here ('-': stdout)."),
    ] = None,
) -> None:
    """Draw every dashboard panel from Prometheus into static HTML pages."""
    if json_out is not None and str(json_out) != "-" and not json_out.parent.resolve().is_dir():
        raise InvalidInput(f"cannot write {json_out}: its directory does not exist")
    report = render_report(
        prometheus,
        out,
        range_s=parse_duration_s(range_text),
        step_s=parse_duration_s(step_text),
        models=model or (),
    )
    if json_out is not None:
        write_json(report_json(report), None if str(json_out) == "-" else json_out)
    if json_out is None or str(json_out) != "-":
        for page in report.pages:
            typer.echo(str(page))
    if report.failed and len(report.failed) == report.panels:
        raise TemporaryError(
            f"every panel failed ({report.panels} of {report.panels}): "
            f"{report.failed[0].error}; pages written under {out}"
        )
    if report.failed:
        typer.echo(
            f"prewarm: warning: {len(report.failed)} of {report.panels} panels failed (see their "
            f"pages); first: {report.failed[0]}",
            err=True,
        )
        return
    typer.echo(
        f"prewarm: {report.panels - len(report.empty)} of {report.panels} panels drawn, "
        f"{len(report.empty)} with no data; open {report.index}",
        err=True,
    )


def report_json(report: RenderReport) -> dict[str, Any]:
    """The ``--json`` document: pages written, panels, and which had no data or failed."""
    return {
        "index": str(report.index),
        "pages": [str(page) for page in report.pages],
        "panels": report.panels,
        "empty": report.empty,
        "failed": [
            {"dashboard": f.dashboard, "panel": f.panel, "error": f.error} for f in report.failed
        ],
    }


def register(app: typer.Typer) -> None:
    """Add ``dashboards`` (with ``render``) to the CLI."""
    app.add_typer(dashboards_app)
