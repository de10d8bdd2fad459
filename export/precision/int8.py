"""int8 encoders for the CPU: smoothed activations, per-token activation scales, per-channel weights.

onnxruntime's `quantize_dynamic` quantizes each activation with one scale for the whole
tensor, which costs twice (figures in docs/performance.md, "int8"):
- quality: a few tokens and hidden channels carry values 10-100x the others, so the rest are
  left with a handful of levels;
- reproducibility: the scale depends on every row in the batch, so a text's embedding changes
  with the texts the batcher happens to merge it with.

So the graph is rewritten here, every weight MatMul `Y = X W` becoming

    s   = max|X| over the row / 127                 one scale per token (row)
    Xq  = QuantizeLinear(X / s, 1, 128)             uint8
    Y   = MatMulIntegerToFloat(Xq, Wq, 1, w, 128) * s

with `Wq = round(W / w)` int8 and `w` one scale per output column. Each row is quantized on
its own, so results do not depend on the batch, and a row's outliers cost only that row.
(uint8 activations: onnxruntime's int8 x int8 kernel is far slower on x86.) The steps
before the MatMul are shared by the matrices reading one activation (Q, K and V).

Before that, the activations that come from a layer norm are smoothed (the SmoothQuant idea):
channel k is divided by s_k and row k of the weights multiplied by s_k, with
s_k = max|X_k| ** ALPHA / max|W_k| ** (1 - ALPHA), max|X_k| measured on calibration inputs.
Exact in fp32; it moves outlier channels from the activations into the weights. Inputs of
the down-projections (the GELU's output) are not smoothed: with per-token scales, smoothing
them lowered the worst cosine at every ALPHA tried.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from export.precision import sensitivity

# Weights use 7 bits (-63..63), not 8. Some of onnxruntime's x86 kernels multiply uint8 by int8
# in pairs summed into int16, which saturates past 32767: with activations around the zero
# point 128, 8-bit weights overflow it, and on an Intel Xeon MatMulIntegerToFloat's results were
# off by up to 17% (an AMD EPYC's kernel was exact). 255 * 63 * 2 = 32130 cannot overflow, on
# any kernel (docs/performance.md, "int8 on Intel CPUs").
WEIGHT_LEVELS = 63
ACTIVATION_LEVELS = 127  # uint8 codes 1..255 around the zero point 128
ALPHA = 0.7  # smoothing strength, from a sweep over 0.5-0.85 on MiniLM
CALIBRATION_TEXTS = 512  # generated texts (export/tools/payloads.py) whose activations set the scales
CALIBRATION_ODD_TEXTS = 64  # of which texts of no words (payloads.odd_texts)
# The worst cosine to fp32 the calibration inputs must keep (held-out texts' bar is 0.99).
CALIBRATION_MIN_COSINE = 0.993
# Constants shared by every quantized MatMul, by initializer name.
_ONE, _ZERO_POINT, _STEP, _TINY = "int8_one", "int8_zero_point", "int8_step", "int8_tiny"
_SWITCH = "int8_fp32_switches"  # the search graph's input: which matrices run fp32 (sensitivity.py)
_CONSTANTS = {
    _ONE: np.float32(1.0),
    _ZERO_POINT: np.uint8(ACTIVATION_LEVELS + 1),
    _STEP: np.float32(1 / ACTIVATION_LEVELS),
    _TINY: np.float32(1e-12),  # keeps the scale of an all-zero row from dividing by zero
}


def quantize_int8(
    path: Path, calibration: Iterable[Mapping[str, np.ndarray]], *, min_cosine: float = CALIBRATION_MIN_COSINE
) -> list[str]:
    """Rewrite the fp32 ONNX file at `path` as a smoothed, per-token int8 graph, leaving in fp32
    the matrices a greedy search chooses so that every calibration input keeps a cosine to fp32
    of `min_cosine` or more (sensitivity.py). Returns the MatMul nodes left in fp32, in the
    order chosen (also in the file's metadata, `int8_fp32_matmuls`).

    `calibration` yields input feeds (name -> array) for the graph at `path`.
    """
    import onnx

    feeds = list(calibration)
    model = onnx.load(str(path))
    weights = {init.name: init for init in model.graph.initializer}
    _gemms_as_matmuls(model, weights)
    consumers = _weight_matmuls(model, weights)
    for index, node in enumerate(node for nodes in consumers.values() for node in nodes):
        node.name = node.name or f"int8_matmul_{index}"
    smoothed = {
        activation: nodes for activation, nodes in consumers.items() if not _down_projection(weights[nodes[0].input[1]])
    }
    reference = sensitivity.run(model, feeds)  # fp32, as traced
    _smooth(model, smoothed, weights, _activation_peaks(model, smoothed, feeds))
    kept = _least_fp32(model, feeds, reference, min_cosine)
    onnx.save(model, str(path))
    return kept


def _least_fp32(model, feeds: list, reference: list[np.ndarray], min_cosine: float) -> list[str]:
    """Quantize `model` in place, leaving in fp32 the matrices sensitivity.py chooses."""
    import onnx
    import onnxruntime as ort

    switchable = onnx.ModelProto()
    switchable.CopyFrom(model)
    found = {init.name: init for init in switchable.graph.initializer}
    switches = _quantize(switchable, _weight_matmuls(switchable, found), found, switch=_SWITCH)
    session = ort.InferenceSession(switchable.SerializeToString(), providers=["CPUExecutionProvider"])
    output = switchable.graph.output[0].name

    def cosines(kept: Collection[str], cases: Sequence[sensitivity.Case]) -> list[np.ndarray]:
        flags = np.array([name in kept for name in switches])
        return [
            sensitivity.row_cosines(session.run([output], {**feed, _SWITCH: flags})[0], expected)
            for feed, expected in cases
        ]

    kept = sensitivity.least_fp32(switches, cosines, list(zip(feeds, reference, strict=True)), min_cosine)
    weights = {init.name: init for init in model.graph.initializer}
    _quantize(model, _weight_matmuls(model, weights), weights, keep=set(kept))
    model.metadata_props.add(key="int8_fp32_matmuls", value=",".join(kept))
    return kept


def _gemms_as_matmuls(model, weights: dict) -> None:
    """Gemm nodes with a constant weight as MatMul + Add, so the quantizer sees them too. The
    tracer emits Gemm for a linear layer on 2-D input: attention output projections of
    open_clip's towers (12 % of ViT-B-32's image tower time, left fp32 otherwise)."""
    from onnx import helper, numpy_helper

    nodes, replaced = [], set()
    for node in model.graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = weights.get(node.input[1]) if node.op_type == "Gemm" else None
        plain = attributes.get("alpha", 1.0) == 1.0 and attributes.get("beta", 1.0) == 1.0
        if weight is None or not plain or attributes.get("transA", 0) or node.input[0] in weights:
            nodes.append(node)
            continue
        replaced.add(weight.name)
        array = numpy_helper.to_array(weight)
        if attributes.get("transB", 0):
            array = array.T
        name = f"{weight.name}_as_matmul"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        weights[name] = model.graph.initializer[-1]  # the graph's own copy, which smoothing rescales
        bias = node.input[2] if len(node.input) == 3 else ""  # optional: absent or ""
        output = node.output[0]  # unique, unlike node names (which may be empty)
        product = f"{output}_product" if bias else output
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product], name=f"{output}_matmul"))
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [output], name=f"{output}_bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    for original in replaced - used:  # the originals, now transposed copies
        model.graph.initializer.remove(weights.pop(original))


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
    if not names:  # onnxruntime would answer every output for an empty list
        return peaks
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


def _quantize(
    model, consumers: Mapping[str, list], weights: Mapping, keep: Collection[str] = (), switch: str | None = None
) -> list[str]:
    """Replace each MatMul in `consumers` by its per-token int8 form (module docstring), but
    those named in `keep`. Returns the names of the MatMuls replaced.

    With `switch`, each keeps its fp32 form beside the int8 one, and a boolean graph input of
    that name (one value per returned name) chooses which runs fp32: the search graph of
    sensitivity.py, which tries many choices on one onnxruntime session."""
    from onnx import TensorProto, helper, numpy_helper

    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.graph.initializer.extend(numpy_helper.from_array(np.array(v), name) for name, v in _CONSTANTS.items())
    peak = _row_peak(model)
    replacements: dict[str, list] = {}  # by the replaced MatMul's output
    replaced: list[str] = []
    for activation, every in consumers.items():
        matmuls = [node for node in every if node.name not in keep]
        if not matmuls:
            continue
        scale, quantized = f"{activation}_int8_scale", f"{activation}_int8"
        steps = [  # once per activation, before its first MatMul
            helper.make_node("Abs", [activation], [f"{activation}_abs"]),
            peak(f"{activation}_abs", f"{activation}_peak"),
            helper.make_node("Mul", [f"{activation}_peak", _STEP], [f"{activation}_step"]),
            helper.make_node("Max", [f"{activation}_step", _TINY], [scale]),
            helper.make_node("Div", [activation, scale], [f"{activation}_scaled"]),
            helper.make_node("QuantizeLinear", [f"{activation}_scaled", _ONE, _ZERO_POINT], [quantized]),
        ]
        for node in matmuls:
            weight = numpy_helper.to_array(weights[node.input[1]])
            column_scale = (np.maximum(np.abs(weight).max(axis=0), 1e-12) / WEIGHT_LEVELS).astype(np.float32)
            integers = np.clip(np.round(weight / column_scale), -WEIGHT_LEVELS, WEIGHT_LEVELS).astype(np.int8)
            name, output = node.input[1], node.output[0]
            model.graph.initializer.append(numpy_helper.from_array(integers, f"{name}_int8"))
            model.graph.initializer.append(numpy_helper.from_array(column_scale, f"{name}_scale"))
            int8_output = f"{output}_int8" if switch else output
            replacements[output] = [
                *steps,
                helper.make_node(
                    "MatMulIntegerToFloat",
                    [quantized, f"{name}_int8", _ONE, f"{name}_scale", _ZERO_POINT],
                    [f"{output}_unscaled"],
                    domain="com.microsoft",
                ),
                helper.make_node("Mul", [f"{output}_unscaled", scale], [int8_output]),
            ]
            if switch:
                index = numpy_helper.from_array(np.array(len(replaced), np.int64), f"{output}_switch_index")
                model.graph.initializer.append(index)
                fp32 = helper.make_node("MatMul", node.input, [f"{output}_fp32"], name=node.name)
                replacements[output] += [
                    fp32,
                    helper.make_node("Gather", [switch, index.name], [f"{output}_switch"]),
                    helper.make_node("Where", [f"{output}_switch", fp32.output[0], int8_output], [output]),
                ]
            replaced.append(node.name)
            steps = []
    nodes = [new for node in model.graph.node for new in replacements.get(node.output[0], [node])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if switch:
        model.graph.input.append(helper.make_tensor_value_info(switch, TensorProto.BOOL, [len(replaced)]))
    used = {name for node in model.graph.node for name in node.input}
    kept = [init for init in model.graph.initializer if init.name in used]  # drop the fp32 weights
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return replaced


def _row_peak(model):
    """A ReduceMax over the last axis, as the model's opset spells it (axes an input from 18)."""
    from onnx import helper, numpy_helper

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 18:
        return lambda x, y: helper.make_node("ReduceMax", [x], [y], axes=[-1], keepdims=1)
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "int8_last_axis"))
    return lambda x, y: helper.make_node("ReduceMax", [x, "int8_last_axis"], [y], keepdims=1)


def _down_projection(weight) -> bool:
    """The feed-forward output: more rows than columns (1536 x 384 in MiniLM)."""
    rows, columns = weight.dims
    return rows > columns
