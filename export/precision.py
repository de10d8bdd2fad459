"""Encoder precision: fp32 as exported, or fp16 weights and activations for GPUs.

fp16 halves the file and, on GPUs with tensor cores, the time; inputs and outputs stay fp32
so nothing else in the pipeline changes. Reductions and normalizations (layer norm, means,
sums, L2 norm, powers, square roots, divisions) are kept in fp32: in fp16 they overflow or
lose the small differences embeddings are made of. The exporters check the fp16 graph
against the reference library like any other (cosine >= 0.999).
"""

from __future__ import annotations

from pathlib import Path

from export.errors import InvalidArgumentError

PRECISIONS = ("fp32", "fp16")
FP32_OPS = ("LayerNormalization", "ReduceMean", "ReduceSum", "ReduceL2", "Pow", "Sqrt", "Div")
# What the exporters accept from an fp16 graph, against the reference's fp32 output.
FP16_AGREEMENT = {"min_cosine": 0.999, "max_abs_diff": 1e-2}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
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
