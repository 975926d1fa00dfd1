"""The Grafana dashboards: one description of their panels, and the documents built from it.

Owns: every panel's title, PromQL targets (with Grafana's ``$model`` variable and ``{{label}}``
legends), unit and layout; the templating variables; the exact JSON text committed under
``dashboards/`` (written by ``dashboards/build.py``). ``prewarm dashboards render``
(:mod:`prewarm.dashboards.render`) draws the same documents from a live Prometheus, so the static
pages cannot drift from what Grafana shows. Metric names are the contract in
``prewarm/daemon/metrics.py`` and ``gpu_agent/metrics.py``.
Must not: do I/O (no files, no network): callers write or query.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel."""

    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    """One panel: a title, its queries, its unit and kind."""

    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    width: int = 12
    overrides: tuple[dict[str, Any], ...] = field(default=())


def _band(lower: str, upper: str) -> tuple[dict[str, Any], ...]:
    """Field overrides that shade the area between two series (the prediction band)."""
    return (
        {
            "matcher": {"id": "byName", "options": upper},
            "properties": [
                {"id": "custom.fillBelowTo", "value": lower},
                {"id": "custom.lineWidth", "value": 0},
                {"id": "custom.fillOpacity", "value": 20},
            ],
        },
        {
            "matcher": {"id": "byName", "options": lower},
            "properties": [{"id": "custom.lineWidth", "value": 0}],
        },
    )


MODEL = 'model=~"$model"'

FORECAST_PANELS = (
    Panel(
        "Forecast vs actual (15 min ahead, p10-p90 band)",
        (
            Query(f"sum by (model) (prewarm_observed_rps{{{MODEL}}})", "actual {{model}}"),
            Query(
                f'sum by (model) (prewarm_forecast_rps{{{MODEL},quantile="mean",horizon="15m"}}'
                " offset 15m)",
                "forecast {{model}}",
            ),
            Query(
                f'sum by (model) (prewarm_forecast_rps{{{MODEL},quantile="0.1",horizon="15m"}}'
                " offset 15m)",
                "p10 {{model}}",
            ),
            Query(
                f'sum by (model) (prewarm_forecast_rps{{{MODEL},quantile="0.9",horizon="15m"}}'
                " offset 15m)",
                "p90 {{model}}",
            ),
        ),
        unit="reqps",
        width=24,
        description="Actual request rate against what was forecast for it 15 minutes earlier.",
    ),
    Panel(
        "Live forecast error (WAPE)",
        (Query(f"prewarm_forecast_error_ratio{{{MODEL}}}", "{{model}}"),),
        unit="percentunit",
    ),
    Panel(
        "Under-forecast rate (actual above planning quantile)",
        (Query(f"prewarm_under_forecast_ratio{{{MODEL}}}", "{{model}}"),),
        unit="percentunit",
    ),
    Panel(
        "Models on reactive fallback / stale forecasts",
        (
            Query("sum(prewarm_model_reactive_fallback)", "reactive fallback"),
            Query("sum(prewarm_forecast_stale)", "stale"),
        ),
    ),
    Panel(
        "Forecast horizons (mean)",
        (
            Query(
                f'prewarm_forecast_rps{{{MODEL},quantile="mean"}}',
                "{{model}} +{{horizon}}",
            ),
        ),
        unit="reqps",
    ),
)

ACTION_PANELS = (
    Panel(
        "Warm hit ratio",
        (
            Query(
                "sum(rate(prewarm_requests_warm_total[15m])) / clamp_min(sum(rate("
                "prewarm_requests_warm_total[15m])) + sum(rate(prewarm_requests_cold_total[15m])),"
                " 1e-9)",
                "warm hit ratio",
            ),
        ),
        unit="percentunit",
    ),
    Panel(
        "Cold starts avoided",
        (Query("sum(increase(prewarm_cold_starts_avoided_total[1h]))", "avoided per hour"),),
    ),
    Panel(
        "Actions applied by type and result",
        (
            Query(
                "sum by (type, result) (increase(prewarm_actions_total[5m]))",
                "{{type}} {{result}}",
            ),
        ),
    ),
    Panel(
        "Plan size by action type",
        (Query("sum by (type) (prewarm_plan_actions)", "{{type}}"),),
    ),
    Panel(
        "Stage lead times",
        (Query("max by (stage) (prewarm_stage_lead_time_seconds)", "{{stage}}"),),
        unit="s",
    ),
    Panel(
        "Tick duration (p95) and leader",
        (
            Query(
                "histogram_quantile(0.95, sum by (le) (rate(prewarm_tick_duration_seconds_bucket"
                "[5m])))",
                "tick p95",
            ),
            Query("max(prewarm_is_leader)", "leader held"),
        ),
        unit="s",
    ),
)

AGENT_PANELS = (
    Panel(
        "Agent memory held by tier",
        (Query("sum by (tier) (prewarm_agent_held_bytes)", "{{tier}}"),),
        unit="bytes",
    ),
    Panel(
        "GPU memory: free, used by others, headroom",
        (
            Query("sum by (gpu) (prewarm_agent_gpu_free_bytes)", "free {{gpu}}"),
            Query("sum by (gpu) (prewarm_agent_gpu_other_used_bytes)", "others {{gpu}}"),
            Query("max(prewarm_agent_headroom_bytes)", "headroom"),
        ),
        unit="bytes",
    ),
    Panel(
        "Evictions by reason",
        (Query("sum by (reason) (increase(prewarm_agent_evictions_total[5m]))", "{{reason}}"),),
    ),
    Panel(
        "Preload throughput",
        (Query("sum by (tier) (rate(prewarm_agent_loaded_bytes_total[5m]))", "{{tier}}"),),
        unit="Bps",
    ),
    Panel(
        "Warm hit ratio at the agents (attaches served from a held tier)",
        (
            Query(
                'sum(increase(prewarm_agent_attaches_total{result="hit"}[1h])) / clamp_min('
                "sum(increase(prewarm_agent_attaches_total[1h])), 1e-9)",
                "hit ratio",
            ),
        ),
        unit="percentunit",
    ),
)


def _templating(with_model: bool) -> dict[str, Any]:
    variables: list[dict[str, Any]] = [
        {
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
        }
    ]
    if with_model:
        variables.append(
            {
                "name": "model",
                "label": "Model",
                "type": "query",
                "datasource": DATASOURCE,
                "query": {"query": "label_values(prewarm_observed_rps, model)", "refId": "models"},
                "definition": "label_values(prewarm_observed_rps, model)",
                "includeAll": True,
                "multi": True,
                "allValue": ".*",
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                "refresh": 2,
                "sort": 1,
                "hide": 0,
            }
        )
    return {"list": variables}


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    targets = [
        {"datasource": DATASOURCE, "expr": q.expr, "legendFormat": q.legend, "refId": chr(65 + i)}
        for i, q in enumerate(panel.queries)
    ]
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {
            "defaults": {"unit": panel.unit, "custom": {"fillOpacity": 0, "lineWidth": 1}},
            "overrides": list(panel.overrides),
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": targets,
    }


def dashboard(
    uid: str, title: str, panels: tuple[Panel, ...], *, with_model: bool
) -> dict[str, Any]:
    """A complete Grafana dashboard document."""
    laid_out = []
    x = y = 0
    for panel_id, panel in enumerate(panels, start=1):
        if x + panel.width > 24:
            x, y = 0, y + 8
        laid_out.append(_panel_json(panel, panel_id, x, y))
        x += panel.width
    return {
        "uid": uid,
        "title": title,
        "tags": ["prewarm"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": _templating(with_model),
        "panels": laid_out,
    }


def all_dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard document, for every committed dashboard."""
    band = _band("p10 {{model}}", "p90 {{model}}")
    forecast = tuple(
        Panel(p.title, p.queries, p.unit, p.kind, p.description, p.width, band) if i == 0 else p
        for i, p in enumerate(FORECAST_PANELS)
    )
    return {
        "prewarm-forecast.json": dashboard(
            "prewarm-forecast", "prewarm / forecast vs actual", forecast, with_model=True
        ),
        "prewarm-actions.json": dashboard(
            "prewarm-actions", "prewarm / actions and savings", ACTION_PANELS, with_model=False
        ),
        "prewarm-gpu-agent.json": dashboard(
            "prewarm-gpu-agent", "prewarm / GPU agent", AGENT_PANELS, with_model=False
        ),
    }


def render(document: dict[str, Any]) -> str:
    """The exact committed text of a dashboard."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"
