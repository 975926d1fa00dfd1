"""The one Tier <-> proto mapping (protos.tiers), and the agent refusing tiers it does not know."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import InvalidInput
from common.tiers import HELD_TIERS, Tier
from protos import control_pb2
from protos import gpu_agent_pb2 as pb
from protos.tiers import agent_tier, control_tier, tier_from_proto, tier_label
from tests.harness.agent import expect, preload_all, refused_preload, source

UNKNOWN: Any = 7
"""A tier value no proto declares (proto3 enums are open: a newer or broken client may send it)."""


def test_both_protos_declare_the_same_tier_enum() -> None:
    assert dict(pb.Tier.items()) == dict(control_pb2.Tier.items())


@pytest.mark.parametrize("tier", HELD_TIERS)
def test_held_tiers_round_trip_through_both_protos(tier: Tier) -> None:
    assert pb.Tier.Name(agent_tier(tier)) == f"TIER_{tier.name}"
    assert control_pb2.Tier.Name(control_tier(tier)) == f"TIER_{tier.name}"
    assert tier_from_proto(agent_tier(tier)) is tier
    assert tier_from_proto(control_tier(tier)) is tier
    assert tier_label(agent_tier(tier), default="-") == tier.label


def test_no_tier_is_unspecified() -> None:
    for tier in (None, Tier.REMOTE):
        assert agent_tier(tier) == pb.TIER_UNSPECIFIED
        assert control_tier(tier) == control_pb2.TIER_UNSPECIFIED
    assert tier_from_proto(pb.TIER_UNSPECIFIED) is None
    assert tier_label(pb.TIER_UNSPECIFIED, default="-") == "-"


@given(st.integers(-(2**31), 2**31 - 1).filter(lambda v: v not in dict(pb.Tier.items()).values()))
def test_unknown_values_are_invalid_input(value: int) -> None:
    with pytest.raises(InvalidInput, match="unknown tier"):
        tier_from_proto(value)
    assert tier_label(value, default="?") == "?"


async def test_the_agent_refuses_unknown_tiers(start_agent, model_file: Path) -> None:
    running = await start_agent()
    code = grpc.StatusCode.INVALID_ARGUMENT
    bad = pb.PreloadRequest(model_id="m", weights=[source(model_file)], target_tier=UNKNOWN)
    assert "unknown tier 7" in await refused_preload(running.stub, bad, code)
    request = pb.PreloadRequest(
        model_id="m", weights=[source(model_file)], target_tier=pb.TIER_DISK
    )
    await preload_all(running.stub, request)
    await expect(code, running.stub.Evict(pb.EvictRequest(model_id="m", tier=UNKNOWN)))
    await expect(code, running.stub.Attach(pb.AttachRequest(model_id="m", max_tier=UNKNOWN)))
