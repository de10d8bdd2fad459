"""Encoder precision: fp32 as exported, fp16 for GPUs, int8 for CPUs.

fp16 (fp16.py) halves the file and, on GPUs with tensor cores, the time. int8 (int8.py) is for
the python runtime (CPUs): text encoders and both CLIP towers. Either graph is checked against the reference library
like any other, with the tolerances below.
"""

from __future__ import annotations

from export.errors import InvalidArgumentError

PRECISIONS = ("fp32", "fp16", "int8")
# What the exporters accept from an fp16 graph, against the reference's fp32 output.
FP16_AGREEMENT = {"min_cosine": 0.999, "max_abs_diff": 1e-2}
# int8 is lossy by design: cosine >= 0.99 for every text, checked at export
# on the validation texts and in tests/test_int8.py on 1,000 texts and a retrieval set.
INT8_AGREEMENT = {"min_cosine": 0.99, "max_abs_diff": 0.1}


def check_precision(precision: str, *, runtime: str) -> str:
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "int8" and runtime != "python":
        # The int8 graph's MatMulIntegerToFloat is an ONNX Runtime CPU operator, which TensorRT
        # does not have; on GPUs fp16 is the fast choice.
        raise InvalidArgumentError(f"int8 is for the python runtime (CPU), not {runtime}; use fp16 on GPUs")
    return precision
