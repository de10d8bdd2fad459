"""The traced attention's softmax NaN guard is dropped (export/text/softmax_guard.py): same
results for every row with a key to attend to, a finite result for a row with none, and graphs
of any other shape left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.text.model import load_text_model
from export.text.softmax_guard import drop_softmax_nan_guards
from export.text.trace import export_text_onnx


def _attention(path: Path, fill: float, constant_fill: bool = True, nan_read: bool = False) -> Path:
    """softmax(scores + Where(mask, 0, fill)) guarded as transformers traces it, times values."""
    constants = [numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    if constant_fill:
        constants.append(numpy_helper.from_array(np.array(fill, np.float32), "fill"))
    nodes = [
        helper.make_node("Where", ["mask", "zero", "fill"], ["filled"]),
        helper.make_node("Add", ["scores", "filled"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probabilities"], axis=-1),
        helper.make_node("IsNaN", ["probabilities"], ["nan"]),
        helper.make_node("Where", ["nan", "zero", "probabilities"], ["guarded"]),
        helper.make_node("MatMul", ["guarded", "values"], ["out"]),
    ]
    inputs = [
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["b", 4, 4]),
        helper.make_tensor_value_info("mask", TensorProto.BOOL, ["b", 1, 4]),
        helper.make_tensor_value_info("values", TensorProto.FLOAT, ["b", 4, 3]),
    ]
    if not constant_fill:
        inputs.append(helper.make_tensor_value_info("fill", TensorProto.FLOAT, []))
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
    if nan_read:
        outputs.append(helper.make_tensor_value_info("nan", TensorProto.BOOL, None))
    graph = helper.make_graph(nodes, "attention", inputs, outputs, constants)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _run(path: Path, **feeds: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_rows_with_keys_are_unchanged_and_a_row_without_is_finite(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    feeds = {
        "scores": rng.normal(size=(3, 4, 4)).astype(np.float32) * 8,
        "mask": np.array([[[1, 1, 1, 1]], [[1, 1, 0, 0]], [[0, 0, 0, 0]]], bool),
        "values": rng.normal(size=(3, 4, 3)).astype(np.float32),
    }
    path = _attention(tmp_path / "attention.onnx", -np.inf)
    before = _run(path, **feeds)
    assert drop_softmax_nan_guards(path) == 1
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert "IsNaN" not in ops and ops.count("Where") == 1
    after = _run(path, **feeds)
    np.testing.assert_allclose(after[:2], before[:2], rtol=0, atol=1e-6)
    assert np.all(before[2] == 0)  # the guard's zeros ...
    average = np.broadcast_to(feeds["values"][2].mean(axis=0), after[2].shape)
    np.testing.assert_allclose(after[2], average, atol=1e-6)  # ... now a plain average


@pytest.mark.parametrize(
    ("fill", "constant_fill", "nan_read"), [(-1e4, True, False), (-np.inf, False, False), (-np.inf, True, True)]
)
def test_other_shapes_keep_their_guard(tmp_path: Path, fill: float, constant_fill: bool, nan_read: bool) -> None:
    """A finite fill (the guard may guard something else), a fill that is not a constant, or
    a NaN test read elsewhere too: nothing proves the guard is dead, so it stays."""
    path = _attention(tmp_path / "attention.onnx", fill, constant_fill, nan_read)
    assert drop_softmax_nan_guards(path) == 0
    assert "IsNaN" in [node.op_type for node in onnx.load(str(path)).graph.node]


def test_exported_text_encoders_carry_no_guard(tmp_path: Path, tiny_models) -> None:
    """A traced BERT loses all its guards; an all-zero attention mask row stays finite, and
    the other rows do not change with it in the batch."""
    text_model = load_text_model(str(tiny_models["tiny-bert"].path))
    path = tmp_path / "model.onnx"
    export_text_onnx(text_model, path)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert "Softmax" in ops and "IsNaN" not in ops
    feeds = text_model.tokenize(["a short text", "and a somewhat longer one than that"])
    alone = _run(path, **feeds)
    with_empty = {name: np.concatenate([array, array[:1]]) for name, array in feeds.items()}
    with_empty["attention_mask"][-1] = 0
    got = _run(path, **with_empty)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[:2], alone, rtol=0, atol=1e-6)
