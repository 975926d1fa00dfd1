"""Reading what the kubelet reports: Pulled events, Go durations, image names, replica starts."""

from __future__ import annotations

import pytest

from actuator.images import InvalidImageReference
from actuator.kubelet import ImagePull, canonical_image, go_duration_s, image_pull, replica_start_s


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1.5s", 1.5), ("850ms", 0.85), ("1m2.5s", 62.5), ("2h0m0s", 7200.0), ("3µs", 3e-6)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert go_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1.5", "s", "1.5sx", "abc", "1..5s"])
def test_not_go_durations(text: str) -> None:
    assert go_duration_s(text) is None


def test_pulled_messages_of_old_and_new_kubelets() -> None:
    new = (
        'Successfully pulled image "nginx:1.27" in 2.1s (3.4s including waiting). '
        "Image size: 72000000 bytes."
    )
    assert image_pull(new) == ImagePull("nginx:1.27", 2.1, 72_000_000)
    assert image_pull('Successfully pulled image "x/y:1" in 1m0s') == ImagePull("x/y:1", 60.0)
    assert image_pull('Container image "x:1" already present on machine') is None
    assert image_pull('Successfully pulled image "x:1" in soon') is None
    assert image_pull("") is None


def test_canonical_image_names() -> None:
    assert canonical_image("nginx") == "docker.io/library/nginx:latest"
    assert canonical_image("vllm/vllm-openai:v0.9") == "docker.io/vllm/vllm-openai:v0.9"
    assert canonical_image("docker.io/vllm/vllm-openai:v0.9") == "docker.io/vllm/vllm-openai:v0.9"
    assert canonical_image("ghcr.io/org/img") == "ghcr.io/org/img:latest"
    assert canonical_image("localhost:5000/img:1") == "localhost:5000/img:1"
    digest = "sha256:" + "ab" * 32
    assert canonical_image(f"img@{digest}") == f"docker.io/library/img@{digest}"
    with pytest.raises(InvalidImageReference, match="64 hex digits"):
        canonical_image("img@sha256:abc")  # a truncated digest is refused, not compared


def _pod(ready: str | None, started: list[str | None]) -> dict[str, object]:
    conditions = (
        [] if ready is None else [{"type": "Ready", "status": "True", "lastTransitionTime": ready}]
    )
    statuses: list[dict[str, object]] = [
        {"state": {"running": {"startedAt": s}} if s else {"waiting": {}}} for s in started
    ]
    return {"status": {"conditions": conditions, "containerStatuses": statuses}}


def test_replica_start_from_the_last_container_start_to_ready() -> None:
    pod = _pod("2026-01-01T00:02:00Z", ["2026-01-01T00:00:00Z", "2026-01-01T00:00:30Z"])
    assert replica_start_s(pod) == 90.0
    assert replica_start_s(_pod(None, ["2026-01-01T00:00:00Z"])) is None
    assert replica_start_s(_pod("2026-01-01T00:02:00Z", [None])) is None
    assert replica_start_s(_pod("2026-01-01T00:02:00Z", [])) is None
    assert replica_start_s(_pod("2026-01-01T00:00:00Z", ["2026-01-01T00:05:00Z"])) is None
    assert replica_start_s({}) is None
