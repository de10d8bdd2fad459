"""Triton Python-backend model: one search collection, on the engine export chose.

Opens the collection once (the embedded engine's folder, or a Milvus server) and answers each
request with one action on it (actions.py: search, upsert, delete, count, exists). One
instance only: the embedded engine lets one process at a time open its folder. Between
executions the engine does its upkeep (`maintain`: indexing new points off the serving path).
"""

from __future__ import annotations

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils
from actions import Action, IndexSettings, RequestError, open_index
from hits import CollectionError


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config["parameters"].items()}
        self.settings = IndexSettings.from_parameters(params)
        self.input_names = [tensor["name"] for tensor in config["input"]]
        # args["model_repository"] is this model's folder; the repository is its parent.
        self.index = open_index(self.settings, Path(args["model_repository"]).parent)

    def execute(self, requests: list) -> list:
        responses = [self._answer(request) for request in requests]
        self.index.maintain()
        return responses

    def _answer(self, request) -> pb_utils.InferenceResponse:
        inputs = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                inputs[name] = tensor.as_numpy()
        try:
            outputs = Action(self.settings, inputs).run(self.index)
        except (RequestError, CollectionError) as error:  # the request's fault: a 400, for it alone
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG))
        except Exception as error:  # the engine's fault: this request fails, the others in the batch go on
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"index step: {error}"))
        return pb_utils.InferenceResponse([pb_utils.Tensor(name, array) for name, array in outputs.items()])

    def finalize(self) -> None:
        self.index.close()
