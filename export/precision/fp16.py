"""fp16 encoders for GPUs: the graph in fp16, fp32 at its edges and in the reductions.

Inputs and outputs stay fp32 so nothing else in the pipeline changes. Reductions and
normalizations (layer norm, means, sums, L2 norm, powers, square roots, divisions) are kept in
fp32: in fp16 they overflow or lose the small differences embeddings are made of.
"""

from __future__ import annotations

from pathlib import Path

FP32_OPS = ("LayerNormalization", "ReduceMean", "ReduceSum", "ReduceL2", "Pow", "Sqrt", "Div")


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
