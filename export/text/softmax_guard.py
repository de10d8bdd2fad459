"""Drop the NaN guard the traced attention puts after every softmax.

transformers' attention fills masked key positions with -inf, so a query row whose keys are
all masked would softmax to NaN; the traced graph guards against it with
`Where(IsNaN(p), 0, p)` over every attention probability ([batch, heads, length, length]):
6 % of all-MiniLM-L6-v2's CPU time on mixed-length texts, 8 % of its int8 graph's
(docs/performance.md, "The softmax NaN guard"). Filling with the lowest finite float instead
makes the guard a no-op: exp(lowest - max) is 0 exactly like exp(-inf), and a row with every
key masked now averages its values instead of zeroing them, a row that pooling then drops
(its attention mask is all zero). So the fill is made finite and the guard removed, only where
the graph has exactly that shape: softmax of (scores + Where(mask, constant, constant)).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_LOWEST = np.finfo(np.float32).min


def drop_softmax_nan_guards(path: Path) -> int:
    """Rewrite the ONNX file at `path` in place; returns how many guards were removed."""
    import onnx

    model = onnx.load(str(path))
    removed = _drop(model.graph)
    if removed:
        onnx.save(model, str(path))
    return removed


def _drop(graph) -> int:
    from onnx import numpy_helper

    producer = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for output in graph.output:
        consumers.setdefault(output.name, []).append(None)  # read outside the graph
    constants = {name: numpy_helper.to_array(init) for name, init in _constant_values(graph).items()}
    replaced: dict[str, str] = {}  # the guard's output -> the softmax's
    dropped: set[int] = set()
    fills: set[str] = set()  # the -inf constants replaced
    for guard in graph.node:
        softmax = _guarded_softmax(guard, producer, consumers, constants)
        fill = _mask_fill(softmax, producer, consumers, constants) if softmax is not None else None
        if fill is None:
            continue
        where, position = fill
        name = f"{where.output[0]}_finite_fill"
        if where.input[position] != name:  # a fill shared by several layers is rewritten once
            lowest = np.full_like(constants[where.input[position]], _LOWEST)
            graph.initializer.append(numpy_helper.from_array(lowest, name))
            constants[name] = lowest
            fills.add(where.input[position])
            where.input[position] = name
        replaced[guard.output[0]] = softmax.output[0]
        dropped.update({id(guard), id(producer[guard.input[0]])})
    nodes = [node for node in graph.node if id(node) not in dropped]
    for node in nodes:
        node.input[:] = [replaced.get(name, name) for name in node.input]
    used = {name for node in nodes for name in node.input} | {output.name for output in graph.output}
    nodes = [node for node in nodes if node.op_type != "Constant" or node.output[0] in used]
    del graph.node[:]
    graph.node.extend(nodes)
    unused = [init for init in graph.initializer if init.name in fills - used]
    for init in unused:
        graph.initializer.remove(init)
    return len(replaced)


def _feeds_softmax_only(node, consumers: dict) -> bool:
    """An Add read only by Softmax nodes: a finite fill changes nothing else."""
    if node is None or node.op_type != "Add":
        return False
    return all(reader is not None and reader.op_type == "Softmax" for reader in consumers.get(node.output[0], []))


def _constant_values(graph) -> dict:
    """Name -> TensorProto of every initializer and Constant node with a `value` tensor."""
    values = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = node.attribute[0].t
    return values


def _guarded_softmax(guard, producer: dict, consumers: dict, constants: dict):
    """The Softmax node if `guard` is Where(IsNaN(s), 0, s) with s = Softmax(...), its IsNaN
    read by the guard alone and its output not a graph output."""
    if guard.op_type != "Where" or len(guard.input) != 3 or None in consumers.get(guard.output[0], []):
        return None
    is_nan = producer.get(guard.input[0])
    if is_nan is None or is_nan.op_type != "IsNaN" or guard.input[2] != is_nan.input[0]:
        return None
    if consumers[is_nan.output[0]] != [guard]:
        return None
    softmax = producer.get(is_nan.input[0])
    zero = constants.get(guard.input[1])
    if softmax is None or softmax.op_type != "Softmax" or zero is None or zero.size != 1 or zero.item() != 0:
        return None
    return softmax


def _mask_fill(softmax, producer: dict, consumers: dict, constants: dict):
    """(the Where node, which of its inputs is -inf) if the softmax's input is
    scores + Where(mask, a, b) with a, b constants and one of them -inf (or already the
    lowest float, for a fill another guard's rewrite shares), the fill read only by such Adds."""
    add = producer.get(softmax.input[0])
    if add is None or add.op_type != "Add":
        return None
    for name in add.input:
        where = producer.get(name)
        if where is None or where.op_type != "Where":
            continue
        if not all(_feeds_softmax_only(node, consumers) for node in consumers[name]):
            continue
        values = [constants.get(input_name) for input_name in where.input[1:]]
        if any(value is None or value.size != 1 for value in values):
            continue
        infinite = [position for position, value in enumerate(values, 1) if (value <= _LOWEST).all()]
        finite = [position for position, value in enumerate(values, 1) if (value > _LOWEST).all()]
        if len(infinite) == 1 and len(finite) == 1:
            return where, infinite[0]
    return None
