"""``belle2 evaluate`` reports what ``belle2 apply`` did: its kept events, weights and their speed-up."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlfastsim.belle2.evaluate import _applied_lines, as_applied


def _frames(keep: list[bool], weight: list[float], label: list[int], score: list[float]
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    events = pd.DataFrame({"event": np.arange(len(keep)), "label": label})
    scores = pd.DataFrame({"event": np.arange(len(keep)), "keep": keep, "weight": weight, "score": score})
    return events, scores


def test_threshold_mode_counts_the_kept_events() -> None:
    events, scores = _frames([True, True, False, False], [1, 1, 0, 0], [1, 0, 1, 0], [0.9, 0.8, 0.2, 0.1])
    a = as_applied(events, scores, {"mode": "threshold", "threshold": 0.5}, 0.0, 1.0, 1.0, 0.0)
    assert a["kept_fraction"] == 0.5 and a["passing_kept_fraction"] == 0.5 and a["n_kept"] == 2
    # half the events simulated, half the passing ones kept: the cost per passing event is unchanged
    assert a["speedup_measured"] == pytest.approx(1.0) and not a["scores_squashed"]
    assert any("kept 2 events (50.0%)" in line for line in _applied_lines(a))


def test_sampling_mode_uses_effective_events_and_flags_squashed_scores() -> None:
    events, scores = _frames([True, True, True, False], [1.0, 100.0, 1.0, 0.0], [1, 1, 0, 0],
                             [1e-9, 2e-9, 1e-9, 1e-9])
    a = as_applied(events, scores, {"mode": "sample", "sample_scale": 2e8, "min_probability": 0.01},
                   0.0, 1.0, 1.0, 0.0)
    assert a["sum_weights_passing"] == pytest.approx(101.0)
    assert a["effective_passing"] == pytest.approx(101.0**2 / (1 + 100.0**2))  # Kish: ~1 of 2
    assert a["speedup_measured"] < 1.0  # weights dilute the kept passing events: the filter loses time
    assert a["scores_squashed"] and any("squashed" in line for line in _applied_lines(a))
