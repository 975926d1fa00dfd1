"""The pure parts of ``prewarm up``: the replay's counter, the clock, where the replay starts, the
history's samples, the state directory, and what it says when the components are not built."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.errors import InvalidInput
from common.ids import ModelId
from forecaster.types import SeriesBatch
from prewarm.up.clock import StackClock
from prewarm.up.fleet import deployment_body, pool_of
from prewarm.up.prometheus import write_openmetrics
from prewarm.up.relay import parse_samples
from prewarm.up.remote_write import Sample, snappy_block, write_request
from prewarm.up.stack import first_live_step
from prewarm.up.state import state_directory
from prewarm.up.testenv import MissingComponents, stack_binaries
from prewarm.up.traffic import plan_replay, traffic_samples

REPO = Path(__file__).resolve().parents[2]
STEP = 600.0


def _batch(counts: list[list[float]], start_s: float = 0.0) -> SeriesBatch:
    models = tuple(ModelId(f"m{i}") for i in range(len(counts)))
    return SeriesBatch(models=models, start_s=start_s, step_s=STEP, counts=np.array(counts))


def test_the_replay_starts_on_a_whole_step_after_now_and_continues_the_history_counter() -> None:
    trace = _batch([[1, 2, 3, 4, 5], [10, 0, 0, 10, 20]])
    replay = plan_replay(trace, first_live=3, now_s=1_000_000.0)
    assert replay.start_s % STEP == 0
    assert 1_000_000.0 < replay.start_s <= 1_000_000.0 + STEP
    assert replay.history.steps == 3
    assert replay.history.end_s == replay.start_s
    assert list(replay.cumulative(replay.start_s)) == [6, 10]
    # Step 3 (4 and 10 requests) spread evenly: half of it at mid-step.
    assert list(replay.cumulative(replay.start_s + STEP / 2)) == [8, 15]
    assert list(replay.cumulative(replay.start_s + 2 * STEP)) == [15, 40]


def test_past_the_end_of_the_trace_its_last_day_repeats() -> None:
    day = round(86400 / STEP)
    trace = _batch([[float(i) for i in range(2 * day)]])
    replay = plan_replay(trace, first_live=2 * day - 1, now_s=0.0)
    end = replay.start_s + STEP  # the trace's last step is done
    after = replay.cumulative(end + STEP)[0] - replay.cumulative(end)[0]
    assert after == day  # step 2*day is step day (the last day's first) again


def test_a_replay_needs_history_before_it() -> None:
    with pytest.raises(InvalidInput, match="after some history"):
        plan_replay(_batch([[1, 2]]), first_live=0, now_s=0.0)


def test_a_push_stamps_every_model_s_counter_with_the_stack_clock() -> None:
    trace = _batch([[1, 2, 3], [4, 5, 6]])
    replay = plan_replay(trace, first_live=2, now_s=0.0)
    samples = traffic_samples(replay, replay.start_s + STEP / 2)
    assert [(dict(s.labels), s.value, s.at_s) for s in samples] == [
        ({"__name__": "inference_requests_total", "model": "m0"}, 4.5, replay.start_s + 300),
        ({"__name__": "inference_requests_total", "model": "m1"}, 12.0, replay.start_s + 300),
    ]


def test_a_write_request_is_protobuf_in_a_snappy_block_of_literals() -> None:
    sample = Sample({"__name__": "x"}, 1.0, 0.001)
    label = b"\x0a\x08__name__\x12\x01x"
    point = b"\x09" + b"\x00" * 6 + b"\xf0\x3f" + b"\x10\x01"
    series = b"\x0a" + bytes([len(label)]) + label + b"\x12" + bytes([len(point)]) + point
    request = b"\x0a" + bytes([len(series)]) + series
    assert write_request([sample]) == request
    assert snappy_block(request) == bytes([len(request), 0xF4, len(request) - 1, 0]) + request


def test_the_daemon_s_metrics_keep_their_names_and_labels_and_get_the_stack_clock() -> None:
    text = '# HELP x_total Things.\n# TYPE x_total counter\nx_total{a="b c"} 3.0\n'
    (sample,) = parse_samples(text, at_s=2.5, job="prewarm")
    assert dict(sample.labels) == {"__name__": "x_total", "job": "prewarm", "a": "b c"}
    assert (sample.value, sample.at_s) == (3.0, 2.5)


def test_the_clock_runs_speed_times_faster_from_its_start_and_never_behind_the_wall() -> None:
    wall = [100.0]
    clock = StackClock(500.0, speed=10, wall=lambda: wall[0])
    assert clock() == 500.0
    clock.start()
    wall[0] += 3
    assert clock() == 530.0
    assert clock.wall_seconds(60) == 6
    late = StackClock(50.0, speed=2, wall=lambda: wall[0])
    late.start()
    assert late() == wall[0]
    with pytest.raises(ValueError, match="at least 1"):
        StackClock(0.0, speed=0.5)


def test_the_replay_starts_before_the_largest_last_day_spike_or_three_quarters_in() -> None:
    day = round(86400 / STEP)
    counts = np.ones((1, 3 * day))
    counts[0, 2 * day + 50] = 500.0  # the spike, on the last day
    assert first_live_step(_batch(counts.tolist()), lead_s=1800) == 2 * day + 50 - 3
    flat = _batch([[1.0] * 40])
    assert first_live_step(flat, lead_s=1800) == 30


def test_history_samples_spread_each_step_so_rate_finds_two_per_step(tmp_path: Path) -> None:
    path = tmp_path / "h.om"
    write_openmetrics(_batch([[4, 6]], start_s=600), path, samples_per_step=2)
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    values = [(float(line.split()[1]), float(line.split()[2])) for line in lines]
    assert values == [(0, 600), (2, 900), (4, 1200), (7, 1500), (10, 1800)]


def test_workloads_claim_their_model_by_label_or_annotation_and_pools_come_from_the_id() -> None:
    plain = deployment_body(ModelId("llama"), "llama", namespace="serving")
    assert plain["metadata"]["labels"]["prewarm.io/model"] == "llama"
    slashed = deployment_body(ModelId("m-large/c3"), "m-large-c3", namespace="serving")
    assert slashed["metadata"]["labels"]["prewarm.io/model"] == ""
    assert slashed["metadata"]["annotations"]["prewarm.io/model"] == "m-large/c3"
    assert slashed["spec"]["replicas"] == 0
    assert pool_of(ModelId("m-large/c3")) == "m-large"
    assert pool_of(ModelId("llama")) == "gpu"


def test_a_directory_prewarm_up_did_not_make_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(InvalidInput, match="not made by prewarm up"), state_directory(tmp_path):
        pass
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_a_second_prewarm_up_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    with state_directory(tmp_path / "s") as first:
        (first / "cluster").mkdir()
        with (
            pytest.raises(InvalidInput, match="another prewarm up is running"),
            state_directory(tmp_path / "s"),
        ):
            pass
    with state_directory(tmp_path / "s") as again:
        assert not (again / "cluster").exists()  # the earlier run's data is gone


def test_missing_components_are_named_with_the_build_command_and_its_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREWARM_KWOK_BIN", "/nonexistent/kwok")
    with pytest.raises(MissingComponents) as missing:
        stack_binaries()
    message = str(missing.value)
    assert "PREWARM_KWOK_BIN" in message
    assert "hack/testenv.sh" in message
    assert "about 30 minutes on 2 cores" in message
    assert "prewarm up --build" in message


def test_prewarm_up_says_what_is_missing_before_starting_anything(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "prewarm", "up", "--dir", str(tmp_path / "s")],
        cwd=REPO,
        env={**os.environ, "PREWARM_ETCD_BIN": "/nonexistent/etcd"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("prewarm: error: not built: PREWARM_ETCD_BIN;"), done.stderr
    assert "about 30 minutes" in done.stderr
    assert not (tmp_path / "s").exists()
