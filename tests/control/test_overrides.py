"""The pure core of the control API: validation, transitions, what is in force, the document."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import InvalidInput, NotFound, ResourceExhausted
from common.ids import ModelId, RequestId
from planner.actions import Tier
from prewarm.control.overrides import (
    ABSURD_REPLICAS,
    ControlState,
    Limits,
    ManualRequest,
    Pause,
    Pin,
    active_overrides,
    add_request,
    cancel_request,
    check_model_id,
    check_request_id,
    dumps,
    loads,
    pause,
    pin_model,
    prune,
    resume,
    unpin_model,
    validate_request,
)

NOW = 1_800_000_000.0
LIMITS = Limits(
    max_replicas_per_request=8,
    max_duration_s=86400.0,
    max_start_ahead_s=7 * 86400.0,
    start_grace_s=60.0,
    max_active_requests=3,
    max_gpu_bytes_per_request=200 * 10**9,
)
LLAMA = ModelId("llama-70b")
KNOWN = frozenset({LLAMA, ModelId("mistral-7b")})


def request(
    number: int = 1,
    *,
    model: str = "llama-70b",
    replicas: int | None = 4,
    tier: Tier | None = None,
    start_s: float = NOW + 600,
    duration_s: float = 7200.0,
) -> ManualRequest:
    return ManualRequest(
        id=RequestId(f"req-{number:016x}"),
        model=ModelId(model),
        replicas=replicas,
        tier=tier,
        start_s=start_s,
        end_s=start_s + duration_s,
        created_s=NOW,
        created_by="oncall",
        reason="launch",
    )


def test_a_sound_request_passes() -> None:
    validate_request(request(), limits=LIMITS, now_s=NOW, known_models=KNOWN)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (request(model=""), "malformed model id"),
        (request(model="bad model"), "malformed model id"),
        (request(model="x" * 300), "malformed model id"),
        (replace(request(), id=RequestId("42")), "malformed request id"),
        (request(replicas=None), "needs replicas"),
        (request(replicas=0), "replicas must be >= 1"),
        (request(replicas=-3), "replicas must be >= 1"),
        (request(replicas=ABSURD_REPLICAS + 1), "not a plausible replica count"),
        (request(start_s=NOW - 3600), "in the past"),
        (request(start_s=NOW + 30 * 86400), "beyond the maximum"),
        (request(duration_s=0), "must be > 0"),
        (request(duration_s=-60), "must be > 0"),
        (request(duration_s=2 * 86400), "beyond the maximum of 1d"),
        (request(start_s=math.nan), "finite"),
        (request(duration_s=math.inf), "finite"),
        (request(replicas=None, tier=Tier.REMOTE), "tier must be one of"),
    ],
)
def test_malformed_requests_are_invalid_input(bad: ManualRequest, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_request(bad, limits=LIMITS, now_s=NOW, known_models=KNOWN)


def test_unknown_model_is_not_found_and_names_known_ones() -> None:
    with pytest.raises(NotFound, match=r"unknown model 'llama-7b'.*llama-70b"):
        validate_request(request(model="llama-7b"), limits=LIMITS, now_s=NOW, known_models=KNOWN)
    # Without a known-model set nothing can be checked, and the request passes.
    validate_request(request(model="llama-7b"), limits=LIMITS, now_s=NOW, known_models=None)


def test_start_within_the_grace_counts_as_valid() -> None:
    validate_request(request(start_s=NOW - 30), limits=LIMITS, now_s=NOW)


def test_over_the_replica_cap_is_refused_with_the_cap_named() -> None:
    with pytest.raises(ResourceExhausted, match=r"over the cap of 8.*max_replicas_per_request"):
        validate_request(request(replicas=9), limits=LIMITS, now_s=NOW)


def test_gpu_bytes_cap_uses_the_model_size() -> None:
    sizes = {LLAMA: 141 * 10**9}
    big = request(replicas=2, tier=Tier.GPU)
    with pytest.raises(ResourceExhausted, match=r"282\.0 GB, over the cap of 200\.0 GB"):
        validate_request(big, limits=LIMITS, now_s=NOW, model_bytes=sizes.get)
    validate_request(
        request(replicas=1, tier=Tier.GPU), limits=LIMITS, now_s=NOW, model_bytes=sizes.get
    )
    # Host tier is not capped by GPU bytes; an unknown size is not either.
    validate_request(
        request(replicas=2, tier=Tier.HOST), limits=LIMITS, now_s=NOW, model_bytes=sizes.get
    )
    validate_request(big, limits=LIMITS, now_s=NOW, model_bytes=lambda _: None)


def test_id_syntax() -> None:
    assert check_request_id("req-00000000000000ff") == "req-00000000000000ff"
    for bad in ("", "req-", "req-XYZ0000000000000", "REQ-0000000000000000", "req-0000"):
        with pytest.raises(InvalidInput, match="prewarm requests"):
            check_request_id(bad)
    assert check_model_id("org/model:v1.2@a+b") == "org/model:v1.2@a+b"


def test_add_request_caps_the_number_stored_and_refuses_a_taken_id() -> None:
    state = ControlState()
    for number in (1, 2, 3):
        state = add_request(state, request(number), limits=LIMITS, now_s=NOW)
    with pytest.raises(ResourceExhausted, match="max_active_requests"):
        add_request(state, request(4), limits=LIMITS, now_s=NOW)
    with pytest.raises(InvalidInput, match="already taken"):
        add_request(ControlState(requests=(request(1),)), request(1), limits=LIMITS, now_s=NOW)
    # Expired requests do not count against the cap: they are pruned on write.
    later = NOW + 600 + 7200
    state = add_request(state, request(5, start_s=later + 10), limits=LIMITS, now_s=later)
    assert [r.id for r in state.requests] == ["req-0000000000000005"]


def test_cancel_removes_exactly_one_and_unknown_is_not_found() -> None:
    state = ControlState(requests=(request(1), request(2)))
    remaining, cancelled = cancel_request(state, RequestId("req-0000000000000001"), now_s=NOW)
    assert cancelled.id == "req-0000000000000001"
    assert [r.id for r in remaining.requests] == ["req-0000000000000002"]
    with pytest.raises(NotFound, match="prewarm requests"):
        cancel_request(remaining, RequestId("req-0000000000000001"), now_s=NOW)


def test_floor_is_in_force_from_start_minus_lead_time_until_end() -> None:
    state = ControlState(requests=(request(1, start_s=NOW + 600, duration_s=3600),))
    assert LLAMA not in active_overrides(state, NOW).floors
    assert active_overrides(state, NOW).pending == state.requests
    early = active_overrides(state, NOW, lead_time_s=lambda _: 900.0)
    assert early.floors[LLAMA].min_replicas == 4
    assert early.floors[LLAMA].until_s == NOW + 4200
    assert early.pending == ()
    assert active_overrides(state, NOW + 600).floors[LLAMA].min_replicas == 4
    assert LLAMA not in active_overrides(state, NOW + 4200).floors


def test_overlapping_requests_take_the_largest_floor_and_the_fastest_tier() -> None:
    state = ControlState(
        requests=(
            request(1, replicas=2, start_s=NOW, duration_s=7200),
            request(2, replicas=6, start_s=NOW, duration_s=3600),
            request(3, replicas=6, start_s=NOW, duration_s=1800),
            request(4, replicas=None, tier=Tier.HOST, start_s=NOW, duration_s=600),
            request(5, replicas=None, tier=Tier.DISK, start_s=NOW, duration_s=9000),
        )
    )
    now = active_overrides(state, NOW + 1)
    floor = now.floors[LLAMA]
    assert (floor.min_replicas, floor.until_s) == (6, NOW + 3600)
    assert floor.request_ids == ("req-0000000000000002", "req-0000000000000003")
    assert "req-0000000000000002" in floor.reason
    assert now.tiers[LLAMA].tier == Tier.HOST
    later = active_overrides(state, NOW + 4000)
    assert later.floors[LLAMA].min_replicas == 2
    assert later.tiers[LLAMA].tier == Tier.DISK


def test_pins_and_pauses_show_in_force_and_expire() -> None:
    state = ControlState(
        pins=(Pin(LLAMA, Tier.GPU, created_s=NOW, created_by="oncall", until_s=NOW + 60),),
        pauses=(
            Pause(ModelId("mistral-7b"), created_s=NOW, created_by="oncall"),
            Pause(None, created_s=NOW, created_by="oncall", until_s=NOW + 30),
        ),
    )
    now = active_overrides(state, NOW)
    assert now.pinned == {LLAMA: Tier.GPU}
    assert now.tiers[LLAMA].tier == Tier.GPU
    assert now.global_pause
    assert now.is_paused(LLAMA)
    assert "prewarm is paused for every model" in now.describe(LLAMA)
    later = active_overrides(state, NOW + 45)
    assert not later.global_pause
    assert later.paused == {"mistral-7b"}
    assert not later.is_paused(LLAMA)
    assert active_overrides(state, NOW + 60).pinned == {}


def test_pin_pause_resume_unpin_transitions() -> None:
    pin = Pin(LLAMA, Tier.HOST, created_s=NOW, created_by="a")
    state = pin_model(ControlState(), pin, limits=LIMITS, now_s=NOW, known_models=KNOWN)
    state = pin_model(state, replace(pin, tier=Tier.GPU), limits=LIMITS, now_s=NOW)
    assert [p.tier for p in state.pins] == [Tier.GPU]  # re-pinning replaces
    state, removed = unpin_model(state, LLAMA, now_s=NOW)
    assert removed.tier == Tier.GPU
    assert state.pins == ()
    with pytest.raises(NotFound, match="not pinned"):
        unpin_model(state, LLAMA, now_s=NOW)
    with pytest.raises(NotFound, match="unknown model"):
        pin_model(
            state, replace(pin, model=ModelId("nope")), limits=LIMITS, now_s=NOW, known_models=KNOWN
        )
    with pytest.raises(InvalidInput, match="beyond the maximum"):
        pin_model(state, replace(pin, until_s=NOW + 10 * 86400), limits=LIMITS, now_s=NOW)
    state = pause(state, Pause(None, NOW, "a"), limits=LIMITS, now_s=NOW)
    with pytest.raises(NotFound, match="not paused"):
        resume(state, LLAMA, now_s=NOW)
    state, lifted = resume(state, None, now_s=NOW)
    assert lifted.model is None
    assert state.pauses == ()
    with pytest.raises(NotFound, match="not paused globally"):
        resume(state, None, now_s=NOW)


def test_prune_drops_only_what_has_expired() -> None:
    state = ControlState(requests=(request(1, duration_s=60), request(2, duration_s=7200)))
    assert [r.id for r in prune(state, NOW + 700).requests] == ["req-0000000000000002"]


_models = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)
_times = st.floats(min_value=1e9, max_value=2e9, allow_nan=False)
_tiers = st.sampled_from([None, Tier.DISK, Tier.HOST, Tier.GPU])


@st.composite
def states(draw: st.DrawFn) -> ControlState:
    requests = tuple(
        ManualRequest(
            id=RequestId(f"req-{index:016x}"),
            model=ModelId(draw(_models)),
            replicas=draw(st.none() | st.integers(1, 100)),
            tier=draw(_tiers),
            start_s=(start := draw(_times)),
            end_s=start + draw(st.floats(1, 1e6)),
            created_s=draw(_times),
            created_by=draw(st.text(max_size=10)),
            reason=draw(st.text(max_size=30)),
        )
        for index in range(draw(st.integers(0, 4)))
    )
    pins = tuple(
        Pin(
            ModelId(m),
            draw(st.sampled_from([Tier.DISK, Tier.HOST, Tier.GPU])),
            draw(_times),
            "x",
            draw(st.none() | _times),
        )
        for m in draw(st.lists(_models, max_size=3, unique=True))
    )
    pauses = tuple(
        Pause(None if m == "" else ModelId(m), draw(_times), "y", draw(st.none() | _times))
        for m in draw(st.lists(st.just("") | _models, max_size=3, unique=True))
    )
    return ControlState(requests=requests, pins=pins, pauses=pauses)


@settings(max_examples=200, deadline=None)
@given(states())
def test_the_stored_document_round_trips(state: ControlState) -> None:
    assert loads(dumps(state)) == state


@settings(max_examples=200, deadline=None)
@given(states(), _times, st.floats(0, 3600))
def test_active_overrides_invariants(state: ControlState, now_s: float, lead_s: float) -> None:
    active = active_overrides(state, now_s, lead_time_s=lead_s)
    live = [r for r in state.requests if not r.is_expired(now_s)]
    for model, floor in active.floors.items():
        in_force = [r for r in live if r.model == model and r.start_s - lead_s <= now_s]
        assert floor.min_replicas == max(r.replicas or 0 for r in in_force)
        assert floor.until_s > now_s
    for pending in active.pending:
        assert pending.start_s - lead_s > now_s
    assert len(active.pending) + sum(1 for r in live if r.start_s - lead_s <= now_s) == len(live)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ("[]", "JSON object"),
        ('{"version": 2}', "version 2"),
        ('{"version": 1, "requests": [{"id": "req-0"}]}', "corrupt"),
        ('{"version": 1, "requests": {}}', "list of objects"),
        ('{"version": 1, "pins": [{"model": "m", "tier": "warp", "created_s": 1}]}', "tier"),
    ],
)
def test_corrupt_documents_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        loads(text)


def test_apply_floors_raises_adds_and_keeps_the_rest() -> None:
    from common.ids import PoolName
    from planner.actions import NodeCapacity, ReplicaFloor, WarmPlan, WorkloadRef
    from prewarm.cycle.manual_actions import apply_floors

    mistral = ModelId("mistral-7b")
    plan = WarmPlan(
        now_s=NOW,
        actions=(
            NodeCapacity(PoolName("a100"), 2, "ahead of demand", 10.0),
            ReplicaFloor(LLAMA, WorkloadRef("serving", "llama"), 2, NOW + 60, "p90", 50.0),
            ReplicaFloor(mistral, WorkloadRef("serving", "mistral"), 5, NOW + 60, "p90", 20.0),
        ),
    )
    state = ControlState(
        requests=(
            request(1, replicas=4, start_s=NOW, duration_s=600),
            request(2, model="mistral-7b", replicas=3, start_s=NOW, duration_s=600),
            request(3, model="qwen-1.5b", replicas=1, start_s=NOW, duration_s=600),
        )
    )
    applied = apply_floors(
        plan,
        active_overrides(state, NOW),
        workload_of=lambda model: WorkloadRef("serving", str(model)),
    )
    floors = {a.model: a for a in applied.of_type(ReplicaFloor)}
    assert applied.actions[0] == plan.actions[0]
    assert floors[LLAMA].min_replicas == 4
    assert floors[LLAMA].until_s == NOW + 600
    assert floors[LLAMA].reason.startswith("manual request req-0000000000000001")
    assert floors[LLAMA].reason.endswith("(the plan alone: 2)")
    assert floors[mistral] == plan.actions[2]  # the plan already holds more
    assert floors[ModelId("qwen-1.5b")].workload == WorkloadRef("serving", "qwen-1.5b")
    assert floors[ModelId("qwen-1.5b")].min_replicas == 1
    # After the requests end the plan comes back as it was: the floor is restored.
    later = active_overrides(state, NOW + 600)
    assert apply_floors(plan, later, workload_of=lambda m: WorkloadRef("s", m)) == plan
