"""Comparing what an export will serve with what the reference library computes.

Exporters call `require_agreement` before writing a model, so a graph or a preprocessing
step that drifts from sentence-transformers or open_clip is refused, not served.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from export.errors import UserError

DEFAULT_OPSET = 17  # the ONNX opset graphs are traced with
# Texts the exporter checks the ONNX graph on: lengths from one token to past any max length,
# several scripts, so that padding, truncation and pooling are all exercised.
VALIDATION_TEXTS = (
    "a",
    "A man is playing a guitar on the street.",
    "Die Katze sitzt auf der Matte und schaut aus dem Fenster.",
    "東京は日本の首都です。",
    "🙂 emoji, punctuation!!! and    spaces",
    "word " * 600,
)


class ExportValidationError(UserError):
    """The exported pipeline does not reproduce the reference within tolerance."""


@dataclass(frozen=True)
class Agreement:
    min_cosine: float
    max_abs_diff: float

    def __str__(self) -> str:
        return f"min cosine {self.min_cosine:.8f}, max abs diff {self.max_abs_diff:.2e}"


def require_agreement(
    what: str, got: np.ndarray, expected: np.ndarray, *, min_cosine: float = 0.99999, max_abs_diff: float = 1e-4
) -> Agreement:
    """Row-wise cosine and max abs diff of two [n, d] arrays; raise if out of tolerance.

    The absolute tolerance scales with the reference's magnitude (models without Normalize).
    """
    got, expected = got.reshape(len(got), -1), expected.reshape(len(expected), -1)
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    agreement = Agreement(float((np.sum(got * expected, axis=1) / norms).min()), float(np.abs(got - expected).max()))
    scale = max(1.0, float(np.abs(expected).max()))
    # Written so that NaN (a zero or broken output) fails too.
    if not (agreement.min_cosine >= min_cosine and agreement.max_abs_diff <= max_abs_diff * scale):
        raise ExportValidationError(f"{what} differs from the reference: {agreement}")
    return agreement
