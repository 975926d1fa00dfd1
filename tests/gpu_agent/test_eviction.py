"""Property tests of the eviction rule (pure functions, no agent)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from common.ids import ModelId
from gpu_agent.eviction import Candidate, admit, choose_victims

candidates = st.lists(
    st.builds(
        Candidate,
        model_id=st.text("abcdefgh", min_size=1, max_size=4).map(ModelId),
        nbytes=st.integers(1, 10**10),
        predicted_value=st.one_of(st.just(0.0), st.floats(0, 1e6, allow_nan=False)),
        last_used=st.floats(0, 1e6, allow_nan=False),
    ),
    max_size=30,
    unique_by=lambda c: c.model_id,
)


@given(candidates, st.integers(0, 10**11))
def test_never_drops_a_denser_model_than_one_it_keeps(pool: list[Candidate], need: int) -> None:
    victims = choose_victims(pool, need)
    kept = [c for c in pool if c not in victims]
    if victims and kept:
        assert max(v.density for v in victims) <= min(k.density for k in kept)


@given(candidates, st.integers(0, 10**11))
def test_frees_enough_when_possible_and_no_more_than_needed(
    pool: list[Candidate], need: int
) -> None:
    victims = choose_victims(pool, need)
    freed = sum(v.nbytes for v in victims)
    if sum(c.nbytes for c in pool) >= need:
        assert freed >= need
        # Minimal prefix: without the last victim it would not have been enough.
        if victims:
            assert freed - victims[-1].nbytes < need
    else:
        assert victims == sorted(victims, key=lambda c: (c.density, c.last_used, c.model_id))
        assert len(victims) == len(pool)


@given(candidates)
def test_ties_fall_back_to_least_recently_used(pool: list[Candidate]) -> None:
    unvalued = [Candidate(c.model_id, c.nbytes, 0.0, c.last_used) for c in pool]
    victims = choose_victims(unvalued, 1)
    if unvalued:
        assert victims[0].last_used == min(c.last_used for c in unvalued)


@given(candidates, st.integers(1, 10**10), st.floats(0, 1e6, allow_nan=False),
       st.integers(0, 10**10))  # fmt: skip
def test_admission_never_displaces_a_denser_model(
    pool: list[Candidate], size: int, value: float, free: int
) -> None:
    newcomer = Candidate(ModelId("new!"), size, value, 2e6)
    victims = admit(pool, newcomer, free_bytes=free)
    if victims is None:
        cheaper = [c for c in pool if c.density <= newcomer.density]
        assert sum(c.nbytes for c in cheaper) < size - free
        return
    assert all(v.density <= newcomer.density for v in victims)
    assert free + sum(v.nbytes for v in victims) >= size
