"""The encoder's length groups (export/steps/onnx_encoder/padding.py), on their own.
Served parity with mixed lengths, right and left padding, is in test_parity.py."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from export.steps.onnx_encoder.padding import extents, length_groups, trim


@given(st.lists(st.integers(1, 512), min_size=1, max_size=200), st.integers(1, 8192))
def test_groups_cover_every_row_once_within_the_budget(lengths: list[int], budget: int) -> None:
    lengths_array = np.array(lengths)
    groups = length_groups(lengths_array, budget)
    rows = np.concatenate(groups)
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    for group in groups:
        assert len(group) == 1 or len(group) * lengths_array[group].max() <= budget


def test_no_budget_is_one_group_in_order() -> None:
    (group,) = length_groups(np.array([5, 1, 9]), 0)
    assert group.tolist() == [0, 1, 2]


def test_short_rows_are_kept_apart_from_a_long_one() -> None:
    lengths = np.array([256] + [10] * 63)
    groups = length_groups(lengths, 4096)
    assert [len(g) for g in groups] == [63, 1]
    assert sum(len(g) * lengths[g].max() for g in groups) == 63 * 10 + 256  # instead of 64 x 256


def test_extents_follow_the_padding_side_and_never_cut_a_token() -> None:
    right = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert extents(right, left=False).tolist() == [2, 3, 1]  # a hole does not shorten the row
    left = np.array([[0, 0, 1, 1], [0, 1, 0, 1], [1, 1, 1, 1]])
    assert extents(left, left=True).tolist() == [2, 3, 4]


def test_trim_keeps_the_token_side() -> None:
    ids = np.arange(12).reshape(3, 4)
    assert trim({"ids": ids}, np.array([2, 0]), 2, left=False)["ids"].tolist() == [[8, 9], [0, 1]]
    assert trim({"ids": ids}, np.array([1]), 3, left=True)["ids"].tolist() == [[5, 6, 7]]
