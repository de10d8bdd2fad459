"""An ONNX encoder run by onnxruntime on the CPU, inside a Triton Python-backend model.

The encoder steps' model.py files subclass `OnnxEncoder`: onnx_encoder's takes token tensors
(or pixels), text_encoder's tokenizes texts first (`OnnxEncoder._inputs` is what differs).
Loads the ONNX file export wrote beside model.py. Token inputs are ragged in the config, so the
dynamic batcher may hand over requests of different sequence lengths: they are merged, then
run in groups of similar length, each padded to its own longest row (padding.py), shortest
first. A batch of one group is answered when it is done, in one message; in a batch of several
groups each request is answered as soon as its rows are done. Each batch's time per unit of
work is shared with the steps that admit requests (admission.py).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from admission import Backlog, instance_index, work_units
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


def invalid(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


def _mismatched(arrays: list[np.ndarray]) -> bool:
    """Inputs of one rank (token ids and mask) must have one shape; all must have the same
    rows (CoCa's decoding step takes image tokens [n, tokens, width] and ids [n, length])."""
    first_rank = {array.shape for array in arrays if array.ndim == arrays[0].ndim}
    return len(first_rank) > 1 or len({len(array) for array in arrays}) > 1


def _answer(request, response) -> None:
    """The request's one and final response, sent now rather than returned from execute()."""
    request.get_response_sender().send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


class OnnxEncoder:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config["parameters"].items()}
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]  # the classifier has two
        self.pad_values = json.loads(params["pad_values"])
        self.left = params["padding_side"] == "left"
        self.length_input = params.get("length_input", "")  # the attention mask, for token inputs
        self.max_batch_tokens = int(params.get("max_batch_tokens", "0"))
        folder = Path(args["model_repository"]) / args["model_version"]
        spinning = params.get("intra_op_spinning", "0") == "1"
        instances = sum(group.get("count", 1) for group in config.get("instance_group", [])) or 1
        threads = _threads(params["intra_op_threads"], instances)
        self.session = _session(folder / params["onnx_file"], threads, spinning)
        self.backlog = Backlog(config["name"]) if params.get("admission") == "1" else None
        self.instance = instance_index(args.get("model_instance_name", ""))
        if self.backlog is not None:
            self.backlog.restart(self.instance)  # what a dead stub had in flight is gone

    def finalize(self) -> None:
        if self.backlog is not None:
            self.backlog.close()

    def execute(self, requests: list) -> list | None:
        """A batch that runs as one session run is answered by returning its responses (one
        message to Triton for all of them). A batch split into length groups answers each
        request as soon as its rows are done (the response sender), not when the whole merged
        batch is: a short query merged with long passages leaves with the first length group,
        and a request's wait is its own work, not its batch's. A send is a round trip to the
        Triton process that the stub waits for: sent one by one, one-text requests spent more
        time answering than in onnxruntime (docs/performance.md, "GPU proxy")."""
        responses: list = [None] * len(requests)  # the invalid ones now, the rest once run
        accepted: list[int] = []
        feeds: dict[str, list[np.ndarray]] = {name: [] for name in self.input_names}
        for index, arrays in enumerate(self._inputs(requests)):
            if not isinstance(arrays, list):  # refused while reading
                responses[index] = arrays
                continue
            if _mismatched(arrays):
                shapes = ", ".join(f"{n} {list(a.shape)}" for n, a in zip(self.input_names, arrays, strict=True))
                responses[index] = invalid(f"inputs must all have the same shape (rows, across ranks), got {shapes}")
                continue
            accepted.append(index)
            for name, array in zip(self.input_names, arrays, strict=True):
                feeds[name].append(array)
        if not accepted:
            return responses

        batch = {name: pad_concat(arrays, self.pad_values.get(name, 0), self.left) for name, arrays in feeds.items()}
        lengths = extents(batch[self.length_input], self.left) if self.length_input else None
        units = self._units(batch, lengths)
        sizes = np.array([len(array) for array in feeds[self.input_names[0]]])
        groups = self._groups(batch, lengths)
        if len(groups) == 1:
            return self._run_together(responses, accepted, sizes, groups[0], units)
        for request, response in zip(requests, responses, strict=True):
            if response is not None:
                _answer(request, response)
        self._run_early([requests[index] for index in accepted], sizes, groups, units)
        return None

    def _inputs(self, requests: list) -> list:
        """Per request, its arrays in `input_names` order, or the response refusing it."""
        return [[pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.input_names] for r in requests]

    def _run_together(
        self,
        responses: list,
        accepted: list[int],
        sizes: np.ndarray,
        group: tuple[np.ndarray, dict[str, np.ndarray]],
        units: np.ndarray,
    ) -> list:
        """One session run for the whole batch; every response returned from execute()."""
        rows, feed = group
        try:
            with self._timed(units) as finished:
                parts = self.session.run(self.output_names, feed)
                finished(units.sum())
        except Exception as error:  # onnxruntime has its own exception types; fail this batch only
            failure = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"encoder failed: {error}"))
            return [failure if response is None else response for response in responses]
        outputs = [np.empty_like(part) for part in parts]
        for whole, part in zip(outputs, parts, strict=True):
            whole[rows] = part
        ends = np.cumsum(sizes)
        for index, size, end in zip(accepted, sizes, ends, strict=True):
            if size == 0:
                responses[index] = invalid("the request holds no rows")
                continue
            tensors = [
                pb_utils.Tensor(n, whole[end - size : end]) for n, whole in zip(self.output_names, outputs, strict=True)
            ]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def _run_early(
        self, accepted: list, sizes: np.ndarray, groups: list[tuple[np.ndarray, dict]], units: np.ndarray
    ) -> None:
        """One session run per length group, shortest first; each request answered (sent) as
        soon as its last row is done."""
        ends = np.cumsum(sizes)
        owner = np.repeat(np.arange(len(accepted)), sizes)  # the request of each row
        rows_left = sizes.copy()
        answered = np.zeros(len(accepted), dtype=bool)
        out: list[np.ndarray] = []  # per output, every row
        try:
            with self._timed(units) as finished:
                for rows, feed in groups:
                    parts = self.session.run(self.output_names, feed)
                    finished(units[rows].sum())
                    out = out or [np.empty((len(owner), *part.shape[1:]), part.dtype) for part in parts]
                    for whole, part in zip(out, parts, strict=True):
                        whole[rows] = part
                    np.subtract.at(rows_left, owner[rows], 1)
                    for index in np.unique(owner[rows]):
                        if rows_left[index] == 0:
                            mine = slice(ends[index] - sizes[index], ends[index])
                            self._send(accepted[index], [whole[mine] for whole in out])
                            answered[index] = True
        except Exception as error:  # onnxruntime has its own exception types; fail this batch only
            failure = pb_utils.TritonError(f"encoder failed: {error}")
            for request in (r for r, done in zip(accepted, answered, strict=True) if not done):
                _answer(request, pb_utils.InferenceResponse(error=failure))
            return
        for index in np.flatnonzero(~answered):  # requests of no rows
            _answer(accepted[index], invalid("the request holds no rows"))

    def _send(self, request, outputs: list[np.ndarray]) -> None:
        tensors = [pb_utils.Tensor(name, array) for name, array in zip(self.output_names, outputs, strict=True)]
        _answer(request, pb_utils.InferenceResponse(output_tensors=tensors))

    def _units(self, batch: dict[str, np.ndarray], lengths: np.ndarray | None) -> np.ndarray:
        """Each row's work in admission units (admission.py): its tokens, or none for images."""
        first = batch[self.input_names[0]]
        if lengths is None:  # token ids at a fixed length; images: no tokens
            lengths = np.full(len(first), first.shape[1] if first.ndim == 2 else 0)
        return work_units(1, lengths)

    def _timed(self, units: np.ndarray):
        if self.backlog is None:
            return contextlib.nullcontext(lambda done: None)
        return self.backlog.batch(self.instance, float(units.sum()))

    def _groups(
        self, batch: dict[str, np.ndarray], lengths: np.ndarray | None
    ) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """(rows, their inputs) per session run: the whole batch, or one per length group for
        token inputs (`lengths`: each row's extent), shortest first."""
        every = np.arange(len(batch[self.input_names[0]]))
        if lengths is None:
            return [(every, batch)]
        groups = length_groups(lengths, self.max_batch_tokens)
        if len(groups) == 1 and lengths.max() == batch[self.length_input].shape[1]:
            return [(every, batch)]
        return [(rows, trim(batch, rows, int(lengths[rows].max()), self.left)) for rows in groups]
