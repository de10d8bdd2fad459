"""Which weight matrices int8 should leave in fp32, chosen per model from its calibration inputs.

A few matrices carry most of int8's error (in MiniLM, measured: the worst texts were punctuation
only, whose activations one matrix quantizes badly). Which ones depends on the model, so
nothing is named by hand: each matrix's own quantization error is measured on calibration
activations (its fp32 product against the product of its quantized input and weight, as
int8.py computes it), and the graph is then quantized with the worst 0, 1, 2, 4, ... left in
fp32 until the whole graph's worst cosine to fp32 over the calibration inputs reaches the bar.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

Feeds = Sequence[Mapping[str, np.ndarray]]


def run(model, feeds: Feeds, outputs: Sequence[str] | None = None) -> list[list[np.ndarray]]:
    """Each feed's outputs (all graph outputs, or `outputs`) under onnxruntime on the CPU."""
    import onnx
    import onnxruntime as ort

    probe = model
    if outputs is not None:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        known = {output.name for output in probe.graph.output}
        for name in outputs:
            if name not in known:
                probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = list(outputs) if outputs is not None else [output.name for output in model.graph.output]
    return [session.run(names, dict(feed)) for feed in feeds]


def worst_cosine(got: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> float:
    """The lowest row-wise cosine between two lists of [rows, ...] arrays."""
    worst = 1.0
    for a, b in zip(got, expected, strict=True):
        a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
        norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
        worst = min(worst, float(((a * b).sum(axis=1) / norms).min()))
    return worst


def matrix_errors(
    model,
    matmuls: Mapping[str, np.ndarray],
    feeds: Feeds,
    quantized_product: Callable[[np.ndarray, np.ndarray], np.ndarray],
    rows: int = 1024,
) -> dict[str, float]:
    """MatMul node name -> its worst relative error over the feeds, ||XW - q(X)q(W)|| / ||XW||
    per row (rows of near-zero product ignored), on at most `rows` rows of each activation per
    feed (a numpy product per matrix is the cost). `matmuls`: node name -> its fp32 weight."""
    nodes = {node.name: node for node in model.graph.node if node.name in matmuls}
    inputs = sorted({node.input[0] for node in nodes.values()})
    errors = dict.fromkeys(matmuls, 0.0)
    pick = np.random.default_rng(0)
    for values in run(model, feeds, inputs):
        activations = dict(zip(inputs, values, strict=True))
        for name, node in nodes.items():
            x = activations[node.input[0]]
            x = x.reshape(-1, x.shape[-1])
            x = x[pick.choice(len(x), rows, replace=False)] if len(x) > rows else x
            exact = x @ matmuls[name]
            difference = np.linalg.norm(exact - quantized_product(x, matmuls[name]), axis=1)
            size = np.linalg.norm(exact, axis=1)
            significant = size > 1e-6 * max(float(size.max()), 1e-30)
            if significant.any():
                errors[name] = max(errors[name], float((difference[significant] / size[significant]).max()))
    return errors


def spread(feeds: Feeds, count: int) -> list:
    """`count` feeds spread over all of them, the last included (calibration inputs end with
    their oddest texts)."""
    step = max(1, len(feeds) // count)
    return [*feeds[: len(feeds) - 1 : step][: count - 1], feeds[-1]]


def keep_counts(total: int) -> list[int]:
    """How many of the worst matrices to try leaving in fp32, in order: 0, 1, 2, 4, ... total."""
    counts, count = [0], 1
    while count < total:
        counts.append(count)
        count *= 2
    return [*counts, total]
