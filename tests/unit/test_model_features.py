"""Model features' pure parts: slopes and spreads, group medians."""

from __future__ import annotations

import numpy as np

from models.features import group_median, hour_marks, nanmedian


def test_group_median_is_each_groups_nan_ignoring_median() -> None:
    rng = np.random.default_rng(4)
    values = rng.normal(size=500)
    values[rng.random(500) < 0.2] = np.nan
    group = rng.integers(0, 37, size=500)
    expected = np.array([nanmedian(values[group == g], axis=0) for g in group])
    np.testing.assert_allclose(group_median(values, group, 37), expected)


def test_a_group_of_nan_only_has_no_median() -> None:
    values = np.array([np.nan, np.nan, 1.0, 3.0])
    group = np.array([0, 0, 1, 1])
    np.testing.assert_array_equal(group_median(values, group, 2), [np.nan, np.nan, 2.0, 2.0])


def test_hour_marks_are_the_whole_hours_in_the_span() -> None:
    np.testing.assert_array_equal(hour_marks(3599.0, 10_800.0), [3600.0, 7200.0, 10_800.0])
    assert len(hour_marks(3601.0, 7199.0)) == 0
