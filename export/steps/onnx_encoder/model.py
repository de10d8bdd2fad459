"""Triton Python-backend model: an ONNX encoder run by onnxruntime on the CPU.

Loads the ONNX file export wrote beside this file. Inputs are ragged in the config, so the
dynamic batcher may hand over requests of different sequence lengths: they are merged, then
run in groups of similar length, each padded to its own longest row (padding.py), and the
embeddings are put back in request order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from padding import extents, length_groups, pad_concat, trim


def _threads(setting: str, instances: int) -> int:
    """`all` CPUs, the CPUs shared among this model's `per_instance`s, or a number."""
    cores = len(os.sched_getaffinity(0))
    if setting == "per_instance":
        return max(1, cores // instances)
    return int(setting) if setting.isdigit() and int(setting) > 0 else cores


def _session(path: Path, intra_op_threads: int, spinning: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    # Spinning threads answer faster between the graph's parallel sections but busy-wait on
    # cores the tokenizer stub and Triton need: off by default, as it stalled requests on
    # small machines (docs/performance.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _invalid(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config["parameters"].items()}
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_name = config["output"][0]["name"]
        self.pad_values = json.loads(params["pad_values"])
        self.left = params["padding_side"] == "left"
        self.length_input = params.get("length_input", "")  # the attention mask, for token inputs
        self.max_batch_tokens = int(params.get("max_batch_tokens", "0"))
        folder = Path(args["model_repository"]) / args["model_version"]
        spinning = params.get("intra_op_spinning", "0") == "1"
        instances = sum(group.get("count", 1) for group in config.get("instance_group", [])) or 1
        threads = _threads(params["intra_op_threads"], instances)
        self.session = _session(folder / params["onnx_file"], threads, spinning)

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        accepted: list[int] = []
        feeds: dict[str, list[np.ndarray]] = {name: [] for name in self.input_names}
        for index, request in enumerate(requests):
            arrays = [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names]
            if len({array.shape for array in arrays}) > 1:
                shapes = ", ".join(f"{n} {list(a.shape)}" for n, a in zip(self.input_names, arrays, strict=True))
                responses[index] = _invalid(f"inputs must all have the same shape, got {shapes}")
                continue
            accepted.append(index)
            for name, array in zip(self.input_names, arrays, strict=True):
                feeds[name].append(array)
        if not accepted:
            return responses

        sizes = [len(array) for array in feeds[self.input_names[0]]]
        batch = {name: pad_concat(arrays, self.pad_values.get(name, 0), self.left) for name, arrays in feeds.items()}
        try:
            embeddings = self._run(batch)
        except Exception as error:  # onnxruntime has its own exception types; fail this batch only
            failure = pb_utils.TritonError(f"encoder failed: {error}")
            for index in accepted:
                responses[index] = pb_utils.InferenceResponse(error=failure)
            return responses
        for index, part in zip(accepted, np.split(embeddings, np.cumsum(sizes)[:-1]), strict=True):
            responses[index] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, part)])
        return responses

    def _run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """One session run, or one per length group for token inputs, in the batch's row order."""
        if not self.length_input:
            return self.session.run([self.output_name], batch)[0]
        lengths = extents(batch[self.length_input], self.left)
        groups = length_groups(lengths, self.max_batch_tokens)
        if len(groups) == 1 and lengths.max() == batch[self.length_input].shape[1]:
            return self.session.run([self.output_name], batch)[0]
        out = None
        for rows in groups:
            (part,) = self.session.run([self.output_name], trim(batch, rows, int(lengths[rows].max()), self.left))
            out = np.empty((len(lengths), *part.shape[1:]), part.dtype) if out is None else out
            out[rows] = part
        return out
