"""The control CLI against a real control server: tables, --json, exit codes, --at/--for parsing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from common.errors import InvalidInput
from common.ids import ModelId
from prewarm.cli.control_cmd import parse_at
from prewarm.cli.main import run
from prewarm.control.client import ControlClient, fetch_forecast, read_token
from tests.control.conftest import READ_TOKEN, WRITE_TOKEN, RunningServer, make_forecast

REPO = Path(__file__).resolve().parents[2]


def cli(
    args: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *,
    token: str | None = WRITE_TOKEN,
) -> tuple[int, str, str]:
    """Run ``prewarm ARGS`` in-process through the real entry point; (exit code, stdout, stderr)."""
    if token is None:
        monkeypatch.delenv("PREWARM_TOKEN", raising=False)
    else:
        monkeypatch.setenv("PREWARM_TOKEN", token)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(sys, "argv", ["prewarm", *args])
    code = 0
    try:
        run()
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_warm_requests_cancel_round_trip(
    running: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ["--server", running.address]
    code, out, err = cli(
        ["warm", "llama-70b", "--replicas", "4", "--at", "08:45", "--for", "2h", *server],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert "warm request stored" in out
    assert "llama-70b" in out
    assert "08:45" in out
    request_id = running.ids[0]
    code, out, _ = cli(["requests", "--json", *server], capsys, monkeypatch, token=READ_TOKEN)
    assert code == 0
    listing = json.loads(out)
    (entry,) = listing["requests"]
    assert entry["id"] == request_id
    assert entry["replicas"] == 4
    assert entry["state"] == "pending"
    assert entry["created_by"] == "oncall"
    start = datetime.fromtimestamp(entry["start_s"], tz=UTC)
    assert (start.hour, start.minute) == (8, 45)
    assert entry["end_s"] - entry["start_s"] == 7200
    code, out, _ = cli(["cancel", request_id, *server], capsys, monkeypatch)
    assert code == 0
    assert "cancelled" in out
    code, out, _ = cli(["requests", "--json", *server], capsys, monkeypatch)
    assert json.loads(out)["requests"] == []


def test_failures_exit_non_zero_with_one_line(
    running: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ["--server", running.address]
    cases = [
        (["warm", "llama-70b", "--replicas", "-1", "--for", "1h"], WRITE_TOKEN, 2, "replicas must"),
        (["warm", "llama-70b", "--replicas", "1", "--for", "soon"], WRITE_TOKEN, 2, "duration"),
        (
            ["warm", "llama-70b", "--replicas", "1", "--for", "1h", "--at", "25:00"],
            WRITE_TOKEN,
            2,
            "time of day",
        ),
        (
            ["warm", "ghost", "--replicas", "1", "--for", "1h"],
            WRITE_TOKEN,
            1,
            "unknown model 'ghost'",
        ),
        (["warm", "llama-70b", "--replicas", "1", "--for", "1h"], None, 1, "missing bearer token"),
        (["warm", "llama-70b", "--replicas", "1", "--for", "1h"], READ_TOKEN, 1, "read-only"),
        (["cancel", "nope"], WRITE_TOKEN, 2, "malformed request id"),
        (["pause"], WRITE_TOKEN, 2, "give a model, or --all"),
        (["resume", "--all"], WRITE_TOKEN, 1, "not paused globally"),
        (["explain", "ghost"], READ_TOKEN, 1, "unknown model"),
    ]
    for args, token, expected, message in cases:
        code, _out, err = cli([*args, *server], capsys, monkeypatch, token=token)
        assert code == expected, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("prewarm: error: "), err
        assert message in lines[0], (args, lines[0])
    assert running.state().requests == ()


def test_unreachable_server_is_a_one_line_failure(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = cli(
        ["requests", "--server", "127.0.0.1:1", "--timeout", "2"], capsys, monkeypatch
    )
    assert code == 1
    assert err.startswith("prewarm: error: cannot reach the control API at 127.0.0.1:1")


def test_pin_pause_plan_explain_tables(
    running: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ["--server", running.address]
    running.view.forecast_map[ModelId("llama-70b")] = make_forecast(
        "llama-70b", start_s=running.clock()
    )
    assert cli(["pin", "mistral-7b", "--tier", "host", *server], capsys, monkeypatch)[0] == 0
    code, out, _ = cli(["pause", "--all", "--for", "30m", "--json", *server], capsys, monkeypatch)
    assert code == 0
    assert json.loads(out)["all_models"] is True
    code, out, _ = cli(["requests", *server], capsys, monkeypatch)
    assert "mistral-7b" in out
    assert "host" in out
    assert "all models" in out
    code, out, _ = cli(["plan", *server], capsys, monkeypatch)
    assert code == 0
    assert "no plan yet" in out
    code, out, _ = cli(["explain", "llama-70b", *server], capsys, monkeypatch)
    assert code == 0
    assert "test-seasonal" in out
    assert "paused for every model" in out
    assert cli(["resume", "--all", *server], capsys, monkeypatch)[0] == 0
    assert cli(["unpin", "mistral-7b", *server], capsys, monkeypatch)[0] == 0


def test_token_file(
    running: RunningServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(WRITE_TOKEN + "\n")
    code, _, err = cli(
        ["pin", "llama-70b", "--server", running.address, "--token-file", str(token_file)],
        capsys,
        monkeypatch,
        token=None,
    )
    assert code == 0, err
    code, _, err = cli(
        ["requests", "--server", running.address, "--token-file", str(tmp_path / "missing")],
        capsys,
        monkeypatch,
    )
    assert code == 2
    assert "cannot read token file" in err


def test_the_documented_command_line_in_a_subprocess(running: RunningServer) -> None:
    env = {**os.environ, "PREWARM_TOKEN": WRITE_TOKEN, "PREWARM_SERVER": running.address}

    def prewarm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "prewarm", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    done = prewarm("warm", "llama-70b", "--replicas", "4", "--at", "08:45", "--for", "2h", "--json")
    assert done.returncode == 0, done.stderr
    stored = json.loads(done.stdout)
    assert stored["model"] == "llama-70b"
    assert stored["replicas"] == 4
    bad = prewarm(
        "warm", "llama-70b", "--replicas", "4", "--at", "2001-01-01T00:00:00Z", "--for", "2h"
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("prewarm: error: start time is")
    assert "in the past" in bad.stderr
    assert len(running.state().requests) == 1


def test_parse_at() -> None:
    now = datetime(2026, 11, 22, 20, 0, tzinfo=UTC).timestamp()
    assert parse_at("08:45", now_s=now) == datetime(2026, 11, 23, 8, 45, tzinfo=UTC).timestamp()
    assert parse_at("21:30", now_s=now) == datetime(2026, 11, 22, 21, 30, tzinfo=UTC).timestamp()
    assert parse_at("20:00", now_s=now) == datetime(2026, 11, 23, 20, 0, tzinfo=UTC).timestamp()
    # 08:45 in Paris (UTC+1 in November) is 07:45 UTC.
    paris = parse_at("08:45", now_s=now, tz="Europe/Paris")
    assert paris == datetime(2026, 11, 23, 7, 45, tzinfo=UTC).timestamp()
    iso = parse_at("2026-11-23T08:45:00Z", now_s=now)
    assert iso == datetime(2026, 11, 23, 8, 45, tzinfo=UTC).timestamp()
    naive = parse_at("2026-11-23T08:45", now_s=now, tz="Europe/Paris")
    assert naive == paris
    for bad, message in (("8h45", "neither"), ("24:00", "time of day"), ("tomorrow", "neither")):
        with pytest.raises(InvalidInput, match=message):
            parse_at(bad, now_s=now)
    with pytest.raises(InvalidInput, match="unknown time zone"):
        parse_at("08:45", now_s=now, tz="Mars/Olympus")


def test_read_token_prefers_the_file(tmp_path: Path) -> None:
    assert read_token(None, environ={"PREWARM_TOKEN": " abc "}) == "abc"
    assert read_token(None, environ={}) is None
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(InvalidInput, match="is empty"):
        read_token(empty)


def test_fetch_forecast_returns_a_forecast(running: RunningServer) -> None:
    original = make_forecast("llama-70b", start_s=running.clock())
    running.view.forecast_map[ModelId("llama-70b")] = original
    got = fetch_forecast(running.address, "llama-70b", token=READ_TOKEN, horizon_s=180)
    assert got.model == "llama-70b"
    assert got.horizon == 3
    assert got.quantiles == (0.5, 0.9)
    assert list(got.quantile(0.9)) == list(original.quantile(0.9)[:3])
    assert got.method == "test-seasonal"


def test_client_follows_the_leader_for_writes(running: RunningServer) -> None:
    from prewarm.control.view import StaticDaemonView
    from tests.control.conftest import start_server, stop_server

    follower = start_server(
        view=StaticDaemonView(
            models={ModelId("llama-70b")}, leader=False, leader_at=running.address
        )
    )
    try:
        with ControlClient(follower.address, token=WRITE_TOKEN) as client:
            stored = client.pin("llama-70b")
        assert stored.model == "llama-70b"
        assert [p.model for p in running.state().pins] == ["llama-70b"]
        assert follower.state().pins == ()
    finally:
        stop_server(follower)


def test_plan_json_has_numbers_for_64_bit_fields(
    running: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.control.test_service import sample_plan

    running.view.current_plan = sample_plan(running.clock())
    code, out, err = cli(
        ["plan", "--json", "--server", running.address], capsys, monkeypatch, token=READ_TOKEN
    )
    assert code == 0, err
    actions = json.loads(out)["actions"]
    assert [a["kind"] for a in actions] == ["node_capacity", "replica_floor", "preload"]
    assert actions[0]["gpus"] == 4
    assert actions[1]["min_replicas"] == 4
    assert actions[2]["bytes"] == 14_500_000_000
    code, out, _ = cli(["plan", "--server", running.address], capsys, monkeypatch)
    assert "gpu on gpu-1 (14.5 GB)" in out


def test_forecast_command_asks_the_daemon_with_server(
    running: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    running.view.forecast_map[ModelId("llama-70b")] = make_forecast(
        "llama-70b", start_s=running.clock()
    )
    server = ["--server", running.address]
    code, out, err = cli(
        ["forecast", "--model", "llama-70b", "--json", *server], capsys, monkeypatch,
        token=READ_TOKEN,
    )  # fmt: skip
    assert code == 0, err
    document = json.loads(out)
    assert document["source"] == running.address
    assert list(document["models"]) == ["llama-70b"]
    assert document["models"]["llama-70b"]["mean"]
    code, out, err = cli(["forecast", "--model", "llama-70b", *server], capsys, monkeypatch,
                         token=READ_TOKEN)  # fmt: skip
    assert code == 0, err
    row = next(line for line in out.splitlines() if "llama-70b" in line)
    assert " - " not in row  # the daemon's p50 and p90 both shown
    code, _, err = cli(["forecast", *server], capsys, monkeypatch)
    assert code == 2
    assert "--server needs --model" in err
    code, _, err = cli(["forecast", "--model", "ghost", *server], capsys, monkeypatch)
    assert code == 1
    assert "ghost" in err


def test_control_verbs_follow_the_json_convention(
    running: RunningServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """``--json -``: stdout is the JSON alone; ``--json PATH``: the file and the table; a bare
    ``--json``: stdout, with the deprecation note on stderr."""
    server = ["--server", running.address]
    code, out, err = cli(
        ["warm", "llama-70b", "-r", "2", "--for", "2h", "--json", "-", *server], capsys, monkeypatch
    )
    assert code == 0, err
    assert json.loads(out)["model"] == "llama-70b"
    assert "deprecated" not in err
    listing = tmp_path / "requests.json"
    code, out, err = cli(["requests", "--json", str(listing), *server], capsys, monkeypatch)
    assert code == 0, err
    assert [r["model"] for r in json.loads(listing.read_text())["requests"]] == ["llama-70b"]
    assert "manual warm requests" in out  # the table as well
    code, out, err = cli(["requests", *server, "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["requests"][0]["model"] == "llama-70b"
    assert "a bare --json is deprecated" in err
    # A --json path that cannot be written stops the verb before it asks the server anything.
    code, _, err = cli(
        ["pin", "mistral-7b", "--json", str(tmp_path / "no" / "pin.json"), *server],
        capsys,
        monkeypatch,
    )
    assert code == 2
    assert err.startswith("prewarm: error: --json")
    assert running.state().pins == ()
    # The old flag form before a verb's argument still reads as it used to.
    code, out, err = cli(["pin", "--json", "mistral-7b", "--tier", "host", *server], capsys,
                         monkeypatch)  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["model"] == "mistral-7b"
    assert "a bare --json is deprecated" in err
    assert [p.model for p in running.state().pins] == ["mistral-7b"]
