"""Demand presets: which counter, and which label of it, says how many requests each model got.

Owns: the table of presets (the request counter each serving engine or gateway exports, the
label that carries the model, as their current releases export them; ``docs/demand.md`` names the
release and the source file each was read from), turning a preset or a free query into the PromQL
the Prometheus source runs, and validating the names. Pure: no I/O, no Prometheus client.

Every preset's PromQL has the same shape, ``sum by (<label>) (rate(<counter>{<matchers>}[<w>]))``:
one series per model in requests per second, counter resets handled by ``rate``. The label and
matchers can be overridden per query (TGI has no model label at all, so its preset reads the
Kubernetes ``service`` label a ServiceMonitor adds; point it at ``pod`` or ``job`` if yours differ).

Gateway and activator presets (``knative``, ``istio``, ``ingress-nginx``) exist because an engine's
own counter vanishes with its last replica: requests that arrive while a model is scaled to zero
are only ever counted in front of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import InvalidInput

CUSTOM = "custom"


@dataclass(frozen=True, slots=True)
class Preset:
    """One project's request counter as it exports it to Prometheus.

    ``metrics`` are summed (Triton counts successes and failures in two counters); ``matchers`` are
    label matchers always applied (e.g. Istio's reporter, so a request is counted once, not by both
    proxies).
    """

    name: str
    project: str
    metrics: tuple[str, ...]
    model_label: str
    matchers: str = ""
    counts: str = ""
    """What one increment is, in the project's words (for the docs and ``--help``)."""


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "vllm",
            "vLLM",
            ("vllm:request_success_total",),
            "model_name",
            counts="a finished request (any finished_reason: stop, length, abort, ...)",
        ),
        Preset(
            "sglang",
            "SGLang",
            ("sglang:num_requests_total",),
            "model_name",
            counts="a finished request",
        ),
        Preset(
            "tgi",
            "Text Generation Inference",
            ("tgi_request_count",),
            # TGI's counters carry no model label: one TGI process serves one model, so the model
            # is whatever Prometheus attached to the scrape target (a ServiceMonitor adds service).
            "service",
            counts="a request received by the router",
        ),
        Preset(
            "triton",
            "Triton Inference Server",
            ("nv_inference_request_success", "nv_inference_request_failure"),
            "model",
            counts="an inference request, successful or failed (Triton has no _total suffix)",
        ),
        Preset(
            "kserve",
            "KServe (Python model server)",
            ("request_predict_seconds_count",),
            "model_name",
            counts="a predict call (the observation count of the latency histogram)",
        ),
        Preset(
            "knative",
            "Knative Serving activator",
            ("http_server_request_duration_seconds_count",),
            "kn_service_name",
            # Only the activator's otelhttp series carry the kn.* attributes as labels; the
            # queue-proxy's own series of the same name do not, so this selects the activator.
            matchers='kn_service_name!=""',
            counts="a request proxied by the activator (the path while a revision is at zero)",
        ),
        Preset(
            "istio",
            "Istio (Envoy standard metrics)",
            ("istio_requests_total",),
            "destination_service_name",
            # Each request is reported by the client-side and the server-side proxy; the client
            # side (or a waypoint) still reports while the destination has no pods.
            matchers='reporter=~"source|waypoint"',
            counts="a request, reported by the client-side proxy or waypoint",
        ),
        Preset(
            "ingress-nginx",
            "ingress-nginx controller",
            ("nginx_ingress_controller_requests",),
            "service",
            counts="a client request to the backend service (no _total suffix)",
        ),
    )
}

PRESET_NAMES: tuple[str, ...] = (*PRESETS, CUSTOM)


def check_preset_name(name: str) -> str:
    """``name`` if it names a preset or ``custom``; else a ``ValueError`` listing the valid names
    (pydantic turns it into one config error at the field)."""
    if name not in PRESET_NAMES:
        valid = ", ".join(PRESET_NAMES)
        raise ValueError(f"unknown demand preset {name!r}; valid presets: {valid}")
    return name


@dataclass(frozen=True, slots=True)
class DemandQuery:
    """One resolved query: the PromQL to run and how to read its answer.

    ``zero_fill``: once a model's series has been seen, a step where it is absent is 0 requests
    (the engine scaled to zero and its counter vanished), not missing. See
    :class:`forecaster.sources.prometheus.PrometheusSource`.
    """

    name: str
    promql: str
    model_label: str
    zero_fill: bool


def preset_promql(
    preset: Preset, *, model_label: str, matchers: str = "", rate_window_s: int
) -> str:
    """``sum by (<label>) (rate(<counter>{<matchers>}[<window>s]))`` for ``preset`` (of every
    counter, for a preset with several).

    ``matchers`` (``namespace="llm",job="vllm"``) are added to the preset's own.
    """
    all_matchers = ",".join(m for m in (preset.matchers, matchers.strip().strip(",")) if m)
    window = f"[{rate_window_s}s]"
    if len(preset.metrics) == 1:
        inner = f"rate({preset.metrics[0]}{{{all_matchers}}}{window})"
    else:
        # rate() drops the metric name, so the counters of one model (Triton's successes and
        # failures share every label) would collide in one vector; a label naming each counter
        # keeps them apart until the sum.
        inner = " or ".join(
            f'label_replace(rate({m}{{{all_matchers}}}{window}), "prewarm_counter", "{m}", "", "")'
            for m in preset.metrics
        )
    return f"sum by ({model_label}) ({inner})"


def resolve(
    *,
    preset: str,
    query: str | None,
    model_label: str | None,
    matchers: str,
    zero_fill: bool | None,
    rate_window_s: int,
    default_label: str = "model",
) -> DemandQuery:
    """A :class:`DemandQuery` from one query's settings.

    ``custom`` needs ``query`` (``{model_label}`` in it is replaced by the label name) and uses
    ``model_label`` or ``default_label``; zero-fill is off unless asked for, as a free query may
    not be a counter rate. A preset takes no ``query``; ``model_label`` overrides its label;
    zero-fill is on unless turned off (every preset is a counter rate). Raises
    :class:`InvalidInput` saying what to change.
    """
    check_preset_name_or_invalid(preset)
    if preset == CUSTOM:
        if not query:
            raise InvalidInput("a custom demand query needs `query` (PromQL, one series per model)")
        label = model_label or default_label
        return DemandQuery(
            name=CUSTOM,
            promql=query.replace("{model_label}", label),
            model_label=label,
            zero_fill=bool(zero_fill),
        )
    if query:
        raise InvalidInput(
            f"preset {preset!r} builds its own PromQL; drop `query` (use `matchers` or "
            "`model_label` to adjust it, or preset: custom for a free query)"
        )
    spec = PRESETS[preset]
    label = model_label or spec.model_label
    return DemandQuery(
        name=preset,
        promql=preset_promql(
            spec, model_label=label, matchers=matchers, rate_window_s=rate_window_s
        ),
        model_label=label,
        zero_fill=True if zero_fill is None else zero_fill,
    )


def check_preset_name_or_invalid(name: str) -> None:
    """:func:`check_preset_name` raising :class:`InvalidInput` (for code paths past pydantic)."""
    try:
        check_preset_name(name)
    except ValueError as error:
        raise InvalidInput(str(error)) from error
