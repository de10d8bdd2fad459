"""Which weight matrices int8 should leave in fp32, chosen per model from its calibration inputs.

A few matrices carry most of int8's error (in MiniLM, measured: the worst texts were punctuation
only, whose activations a few matrices quantize badly). Which ones depends on the model, so
nothing is named by hand. The search is greedy on the whole graph's output: while some
calibration input's cosine to fp32 is below the bar, try leaving each remaining matrix in fp32
on the inputs below it, and keep the one that lifts them most. A matrix's own quantization
error predicted the graph's badly, and weighing the lift by the matrix's size chose many small
matrices of little lift (docs/performance.md, "int8: which matrices stay fp32"): the graph's
output is what the bar is about, so it is what is measured. Each try is one run, on the few
inputs below the bar, of one graph in which every matrix can be switched to fp32 (int8.py):
a try costs under a second, not a graph built and loaded per candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np

Feed = Mapping[str, np.ndarray]
# (inputs, the fp32 graph's output for them): what a graph's output is compared with
Case = tuple[Feed, np.ndarray]
# kept-in-fp32 names, cases -> per case, each row's cosine to its fp32 output
Cosines = Callable[[Collection[str], Sequence[Case]], list[np.ndarray]]
PROBE_ROWS = 64  # the worst rows each candidate is tried on


def run(model, feeds: Sequence[Feed]) -> list[np.ndarray]:
    """Each feed's first graph output under onnxruntime on the CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    output = model.graph.output[0].name
    return [session.run([output], dict(feed))[0] for feed in feeds]


def row_cosines(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Cosine of each row of two [rows, ...] arrays: 1 for zeros against zeros, 0 for zeros
    against anything else."""
    a, b = got.reshape(len(got), -1).astype(np.float64), expected.reshape(len(expected), -1).astype(np.float64)
    size_a, size_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (size_a <= 1e-30) & (size_b <= 1e-30)
    cosine = (a * b).sum(axis=1) / np.maximum(size_a * size_b, 1e-30)
    return np.where(both_zero, 1.0, cosine)


def least_fp32(names: Sequence[str], cosines: Cosines, cases: Sequence[Case], min_cosine: float) -> list[str]:
    """The matrices (of `names`) to leave in fp32, in the order chosen, so that every row of
    `cases` keeps `min_cosine` or more."""
    kept: list[str] = []
    while len(kept) < len(names):
        scores = cosines(kept, cases)
        if min(float(score.min()) for score in scores) >= min_cosine:
            break
        probe = _worst_rows(cases, scores, min_cosine)
        before = _shortfall(cosines(kept, probe), min_cosine)
        gains = {
            name: before - _shortfall(cosines([*kept, name], probe), min_cosine) for name in names if name not in kept
        }
        kept.append(max(gains, key=gains.get))
    return kept


def _shortfall(scores: list[np.ndarray], min_cosine: float) -> float:
    """How far below the bar the rows are, summed: every row counts, not only the worst (one
    matrix rarely fixes the worst row and the second worst at once)."""
    return float(sum(np.maximum(min_cosine - score, 0).sum() for score in scores))


def _worst_rows(cases: Sequence[Case], scores: list[np.ndarray], min_cosine: float) -> list[Case]:
    """The rows below the bar (at most PROBE_ROWS, the worst), as cases cut from their own
    feeds: a row keeps its feed's padding, so it computes as it did there."""
    ranked = sorted(
        (float(score[row]), index, row)
        for index, score in enumerate(scores)
        for row in np.flatnonzero(score < min_cosine)
    )[:PROBE_ROWS]
    rows: dict[int, list[int]] = {}
    for _, index, row in ranked:
        rows.setdefault(index, []).append(int(row))
    return [
        ({name: value[picked] for name, value in cases[index][0].items()}, cases[index][1][picked])
        for index, picked in rows.items()
    ]
