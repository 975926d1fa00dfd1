"""Per-series selection (:class:`forecaster.selection.Selector`)."""

from __future__ import annotations

import numpy as np

from forecaster.selection import Selector


def test_the_preferred_candidate_wins_ties_and_margins_but_not_a_clear_loss() -> None:
    selector = Selector(candidates=3, level=0.9)
    selector.grow(3)
    actual = np.array([[5.0] * 20, [5.0] * 20, [5.0] * 20])
    point = np.stack(
        [
            np.array([[5.0] * 20, [5.0] * 20, [5.0] * 20]),  # exact everywhere
            np.array([[5.0] * 20, [6.0] * 20, [5.0] * 20]),
            np.array([[5.0] * 20, [5.3] * 20, [9.0] * 20]),  # the preferred combination
        ]
    )
    selector.update(actual, point, point)
    eligible = np.ones((3, 3), dtype=bool)
    chosen = selector.choose(eligible, preferred=2, margin=0.3, point=True)
    # Series 0: all tie at 0 -> preferred; series 1: 0 vs 0.15 beats the margin -> candidate 0;
    # series 2: preferred is far worse -> candidate 0.
    assert chosen.tolist() == [2, 0, 0]
    assert selector.choose(eligible, point=True).tolist() == [0, 0, 0]
