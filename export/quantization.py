"""int8 encoders for the CPU: smoothed activations, then per-channel dynamic quantization.

Plain `quantize_dynamic` loses too much on MiniLM-class models (cosine to fp32 0.80-0.95 per
text, measured on tests/texts.py): each activation is quantized with one scale for the whole
tensor, and a few hidden channels carry values 10-100x the others, so every other channel is
left with a handful of levels. Three measured steps fix most of it (docs/performance.md):

1. Smoothing (the SmoothQuant idea): for each activation X feeding weight MatMuls, divide
   channel k by s_k and multiply row k of the weights by s_k, with
   s_k = max|X_k| ** ALPHA / max|W_k| ** (1 - ALPHA), max|X_k| measured on calibration
   inputs. Exact in fp32; it moves the outliers from the activations into the weights,
   whose per-channel scales absorb them. A single Mul per activation (shared by the Q, K and
   V projections) is all it costs at run time.
2. Per-channel weight scales (one per output column), not one per matrix.
3. Down-projections (weights with more rows than columns: the feed-forward output, whose
   input is the GELU's long-tailed output) stay fp32. Quantizing them is what breaks short
   texts; no smoothing strength fixed them (measured 0.0-0.9).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

ALPHA = 0.7  # smoothing strength, from a sweep over 0.5-0.85 on MiniLM
CALIBRATION_TEXTS = 512  # generated texts (export/payloads.py) whose activations set the scales


def quantize_int8(path: Path, calibration: Iterable[Mapping[str, np.ndarray]]) -> None:
    """Rewrite the fp32 ONNX file at `path` as a smoothed, dynamically quantized int8 graph.

    `calibration` yields input feeds (name -> array) for the graph at `path`.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(path))
    weights = {init.name: init for init in model.graph.initializer}
    consumers = _weight_matmuls(model, weights)
    peaks = _activation_peaks(model, consumers, calibration)
    _smooth(model, consumers, weights, peaks)
    quantized = [
        node.name for nodes in consumers.values() for node in nodes if not _down_projection(weights[node.input[1]])
    ]
    root = logging.getLogger()
    root.addFilter(_no_preprocessing_advice)
    try:
        quantize_dynamic(model, str(path), weight_type=QuantType.QInt8, per_channel=True, nodes_to_quantize=quantized)
    finally:
        root.removeFilter(_no_preprocessing_advice)


def _no_preprocessing_advice(record: logging.LogRecord) -> bool:
    """onnxruntime advises its optional pre-pass (shape inference, graph cleanup) on every call,
    on the root logger. The graphs here quantize as intended without it (tests/test_int8.py
    counts the quantized nodes), so the advice would only alarm the person exporting."""
    return not record.getMessage().startswith("Please consider to run pre-processing")


def _weight_matmuls(model, weights: Mapping) -> dict[str, list]:
    """Activation name -> the MatMul nodes multiplying it by a 2-D constant weight used nowhere
    else (scaling a shared weight's rows would change its other uses)."""
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    groups: dict[str, list] = {}
    for node in model.graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is not None and len(weight.dims) == 2 and uses[weight.name] == 1 and node.input[0] not in weights:
            groups.setdefault(node.input[0], []).append(node)
    return groups


def _activation_peaks(model, consumers: Mapping[str, list], calibration: Iterable[Mapping[str, np.ndarray]]):
    """Per-channel max |X| of every smoothed activation over the calibration feeds."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in consumers:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = list(consumers)
    peaks: dict[str, np.ndarray] = {}
    for feeds in calibration:
        for name, value in zip(names, session.run(names, dict(feeds)), strict=True):
            peak = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            peaks[name] = np.maximum(peaks[name], peak) if name in peaks else peak
    return peaks


def _smooth(model, consumers: Mapping[str, list], weights: Mapping, peaks: Mapping[str, np.ndarray]) -> None:
    from onnx import helper, numpy_helper

    nodes = list(model.graph.node)
    for index, (activation, matmuls) in enumerate(consumers.items()):
        arrays = [numpy_helper.to_array(weights[node.input[1]]) for node in matmuls]
        weight_peak = np.max([np.abs(array).max(axis=1) for array in arrays], axis=0)
        scale = np.maximum(peaks[activation], 1e-5) ** ALPHA / np.maximum(weight_peak, 1e-5) ** (1 - ALPHA)
        scale = np.clip(scale, 1e-3, 1e3).astype(np.float32)
        inverse = numpy_helper.from_array(1 / scale, f"{activation}_smooth_scale")
        smoothed = f"{activation}_smoothed"
        model.graph.initializer.append(inverse)
        model.graph.node.insert(
            nodes.index(matmuls[0]) + index,  # each insertion shifts the later positions by one
            helper.make_node("Mul", [activation, inverse.name], [smoothed], name=f"{activation}_smooth"),
        )
        for node, array in zip(matmuls, arrays, strict=True):
            node.input[0] = smoothed
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(array * scale[:, None], node.input[1]))


def _down_projection(weight) -> bool:
    rows, columns = weight.dims
    return rows > columns
