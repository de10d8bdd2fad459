"""Encoder precision: fp32 as exported, fp16 for GPUs, int8 for CPUs.

fp16 halves the file and, on GPUs with tensor cores, the time; inputs and outputs stay fp32
so nothing else in the pipeline changes. int8 (text pipelines on the python runtime) is in
export/quantization.py. Reductions and normalizations (layer norm, means,
sums, L2 norm, powers, square roots, divisions) are kept in fp32: in fp16 they overflow or
lose the small differences embeddings are made of. The exporters check the fp16 graph
against the reference library like any other (cosine >= 0.999).
"""

from __future__ import annotations

from pathlib import Path

from export.errors import InvalidArgumentError

PRECISIONS = ("fp32", "fp16", "int8")
FP32_OPS = ("LayerNormalization", "ReduceMean", "ReduceSum", "ReduceL2", "Pow", "Sqrt", "Div")
# What the exporters accept from an fp16 graph, against the reference's fp32 output.
FP16_AGREEMENT = {"min_cosine": 0.999, "max_abs_diff": 1e-2}
# int8 is lossy by design: the bar of issue 6 (cosine >= 0.99 for every text), checked at export
# on the validation texts and in tests/test_int8.py on 1,000 texts and a retrieval set.
INT8_AGREEMENT = {"min_cosine": 0.99, "max_abs_diff": 0.1}


def check_precision(precision: str, *, kind: str, runtime: str) -> str:
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "int8" and (kind != "text" or runtime != "python"):
        # The int8 graph's MatMulIntegerToFloat is an ONNX Runtime CPU operator, which TensorRT
        # does not have; on GPUs fp16 is the fast choice.
        raise InvalidArgumentError(
            f"int8 is for text pipelines on the python runtime (CPU), not {kind} on {runtime}; use fp16 on GPUs"
        )
    return precision


def convert_to_fp16(path: Path) -> None:
    """Rewrite the ONNX file at `path` in fp16, fp32 at its edges and in FP32_OPS."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = convert_float_to_float16(
        onnx.load(str(path)), keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS]
    )
    # The converter adds one Cast per consumer of a tensor that enters kept-fp32 ops, all with
    # the same name and output: identical nodes, which ONNX Runtime refuses. Keep one of each.
    seen, nodes = set(), []
    for node in model.graph.node:
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(path))
