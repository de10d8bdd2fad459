"""Shaping a merged batch of token rows for the encoder.

The dynamic batcher hands over requests padded to different lengths. Padding them all to the
longest makes every row pay for the longest text: one 256-token passage among 63 short
queries multiplies the batch's work by ten or more. So rows are grouped by length (sorted,
then cut so that rows x longest stays within a token budget) and each group runs padded only
to its own longest row. Padded positions are masked, so results are the same either way.
"""

from __future__ import annotations

import numpy as np


def pad_concat(arrays: list[np.ndarray], value: int, left: bool) -> np.ndarray:
    """Stack [n_i, L_i] arrays into one [sum n_i, max L_i], padding with `value` on one side."""
    length = max(a.shape[1] for a in arrays)
    if all(a.shape[1] == length for a in arrays):
        return np.concatenate(arrays)
    out = np.full((sum(len(a) for a in arrays), length), value, dtype=arrays[0].dtype)
    row = 0
    for a in arrays:
        columns = slice(length - a.shape[1], length) if left else slice(0, a.shape[1])
        out[row : row + len(a), columns] = a
        row += len(a)
    return out


def extents(mask: np.ndarray, left: bool) -> np.ndarray:
    """Per row, how many trailing (left padding) or leading (right padding) positions hold
    tokens: up to the last nonzero mask value, so a mask with holes is never cut short."""
    present = mask != 0
    if left:
        first = np.argmax(present, axis=1)
        return np.where(present.any(axis=1), mask.shape[1] - first, 1)
    last = np.argmax(present[:, ::-1], axis=1)
    return np.where(present.any(axis=1), mask.shape[1] - last, 1)


def length_groups(lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Row indices in groups of similar length, each within rows x longest <= max_tokens
    (a row longer than the budget goes alone). max_tokens <= 0: one group of all rows."""
    if max_tokens <= 0 or len(lengths) <= 1:
        return [np.arange(len(lengths))]
    order = np.argsort(lengths, kind="stable")
    groups, start = [], 0
    for end in range(1, len(order)):
        if (end - start + 1) * lengths[order[end]] > max_tokens:  # ascending: the new row is the longest
            groups.append(order[start:end])
            start = end
    groups.append(order[start:])
    return groups


def trim(batch: dict[str, np.ndarray], rows: np.ndarray, length: int, left: bool) -> dict[str, np.ndarray]:
    """`rows` of every input, keeping `length` positions: the last ones under left padding,
    the first ones under right padding."""
    columns = slice(-length, None) if left else slice(0, length)
    return {name: array[rows, columns] for name, array in batch.items()}
