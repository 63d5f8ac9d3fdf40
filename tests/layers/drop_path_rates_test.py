"""Tests for keras_regularize.layers.drop_path_rates."""

import numpy as np
import pytest

from keras_regularize.layers import drop_path_rates


def test_linear_from_zero_to_max():
    rates = drop_path_rates(12, 0.5)
    assert len(rates) == 12 and rates[0] == 0.0 and rates[-1] == 0.5
    np.testing.assert_allclose(np.diff(rates), 0.5 / 11)


def test_stages_split_one_schedule():
    staged = drop_path_rates(12, 0.3, stages=[2, 2, 6, 2])
    assert [len(s) for s in staged] == [2, 2, 6, 2]
    assert sum(staged, []) == drop_path_rates(12, 0.3)


def test_edge_counts():
    assert drop_path_rates(0, 0.2) == []
    assert drop_path_rates(1, 0.2) == [0.0]
    assert drop_path_rates(3, 0.2, stages=[0, 3]) == [[], [0.0, 0.1, 0.2]]


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((-1, 0.1), {}, "argument `num_blocks`.*Received: num_blocks=-1"),
        ((4, 1.0), {}, "argument `max_rate`.*Received: max_rate=1.0"),
        ((4, -0.2), {}, "argument `max_rate`.*Received: max_rate=-0.2"),
        ((4, 0.1), {"stages": [2, 3]}, r"summing to num_blocks=4"),
        ((4, 0.1), {"stages": [5, -1]}, r"Received: stages=\[5, -1\]"),
        ((4, 0.1), {"stages": 4}, r"Received: stages=4"),
    ],
)
def test_bad_arguments(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        drop_path_rates(*args, **kwargs)


@pytest.mark.parametrize(
    "args, kwargs, name",
    [
        ((4, float("inf")), {}, "max_rate"),
        ((4, float("nan")), {}, "max_rate"),
        ((4, True), {}, "max_rate"),
        ((4, "0.1"), {}, "max_rate"),
        ((4, None), {}, "max_rate"),
        ((True, 0.1), {}, "num_blocks"),
        ((float("inf"), 0.1), {}, "num_blocks"),
        ((4.0, 0.1), {}, "num_blocks"),
        ((2, 0.1), {"stages": [True, 1]}, "stages"),
    ],
)
def test_non_finite_or_mistyped_arguments_are_refused(args, kwargs, name):
    with pytest.raises(ValueError, match=f"argument `{name}`.*Received"):
        drop_path_rates(*args, **kwargs)
