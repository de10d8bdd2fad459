"""Zero-shot classification as an ONNX graph: image embeddings in, the best label and the
per-label scores out, served by the encoders' runtime (a Python hop fewer on GPUs).

    logits = logit_scale * EMBEDDING @ labels.T  (+ logit_bias for SigLIP)
    SCORES = softmax(logits) over the labels (CLIP), or sigmoid(logits) per label (SigLIP)
    LABEL  = labels[argmax(SCORES)]

The label embeddings (the mean of each label's prompt embeddings, renormalized) and the label
strings are constants of the graph. The string lookup is a Gather on a string tensor, which
ONNX Runtime runs on the CPU under any execution provider; TensorRT has no strings, so the
classifier runs on ONNX Runtime whatever the encoders run on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from triton_embeddings.names import EMBEDDING, LABEL, SCORES


def write_classifier_onnx(
    path: Path,
    labels: Sequence[str],
    label_embeddings: np.ndarray,
    *,
    logit_scale: float,
    logit_bias: float | None,
    opset: int,
) -> None:
    """The classifier graph at `path`; sigmoid scores when the model has a `logit_bias`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    count, dimension = label_embeddings.shape
    constants = [
        numpy_helper.from_array(np.ascontiguousarray(label_embeddings.T, dtype=np.float32), "label_embeddings"),
        numpy_helper.from_array(np.array(logit_scale, dtype=np.float32), "logit_scale"),
        numpy_helper.from_array(np.array(logit_bias or 0.0, dtype=np.float32), "logit_bias"),
        helper.make_tensor("labels", TensorProto.STRING, [count], [label.encode() for label in labels]),
    ]
    if logit_bias is None:
        scores = [helper.make_node("Softmax", ["logits"], [SCORES.name], axis=-1)]
    else:
        scores = [
            helper.make_node("Add", ["logits", "logit_bias"], ["biased"]),
            helper.make_node("Sigmoid", ["biased"], [SCORES.name]),
        ]
    nodes = [
        helper.make_node("MatMul", [EMBEDDING.name, "label_embeddings"], ["cosines"]),
        helper.make_node("Mul", ["cosines", "logit_scale"], ["logits"]),
        *scores,
        helper.make_node("ArgMax", [SCORES.name], ["best"], axis=-1, keepdims=1),
        helper.make_node("Gather", ["labels", "best"], [LABEL.name], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "zero_shot_classifier",
        [helper.make_tensor_value_info(EMBEDDING.name, TensorProto.FLOAT, ["batch", dimension])],
        [
            helper.make_tensor_value_info(SCORES.name, TensorProto.FLOAT, ["batch", count]),
            helper.make_tensor_value_info(LABEL.name, TensorProto.STRING, ["batch", 1]),
        ],
        [constant for constant in constants if constant.name != "logit_bias" or logit_bias is not None],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
