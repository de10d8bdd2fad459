"""Triton Python-backend model: CoCa captions, the decoding loop around an ONNX decoding step.

Takes what the caption image encoder made of each image (IMAGE_TOKENS) and, optionally, a
LABEL whose prompt the caption starts from (the classify_caption ensemble passes the
classifier's label). Every token, the unfinished rows of all requests in the batch go to the
decoding-step model together through BLS (one call per distinct length); decoding.py beside
this file holds the loop (greedy or beam) and the detokenizer, both read from the settings
file export wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from decoding import DecodingSettings, decode, detokenize


def _invalid(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config["parameters"].items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        self.settings = DecodingSettings.from_json((folder / params["settings_file"]).read_text(encoding="utf-8"))
        self.step_model = params["decoding_step"]
        self.tokens_name, self.label_name = params["image_tokens"], params["label"]
        self.ids_name, self.logits_name = params["input_ids"], params["logits"]
        self.step_rows = int(params["decoding_step_max_batch_size"])
        self.caption_name = config["output"][0]["name"]

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        tokens, prefixes, owners, labels = [], [], [], []
        for index, request in enumerate(requests):
            try:
                request_tokens, request_prefixes, request_labels = self._read(request)
            except ValueError as error:
                responses[index] = _invalid(str(error))
                continue
            tokens.append(request_tokens)
            prefixes.extend(request_prefixes)
            owners.extend([index] * len(request_prefixes))
            labels.append(request_labels)
        if not tokens:
            return responses
        image_tokens = np.concatenate(tokens)
        try:
            sequences = decode(prefixes, lambda rows, ids: self._step(image_tokens[rows], ids), self.settings)
        except pb_utils.TritonModelException as error:
            failure = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"decoding failed: {error}"))
            return [failure if response is None else response for response in responses]
        captions = np.array([detokenize(ids, self.settings).encode() for ids in sequences], dtype=np.object_)
        owners_array = np.array(owners)
        for index, request_labels in zip(np.unique(owners_array).tolist(), labels, strict=True):
            rows = captions[owners_array == index].reshape(-1, 1)
            outputs = [pb_utils.Tensor(self.caption_name, rows), pb_utils.Tensor(self.label_name, request_labels)]
            responses[index] = pb_utils.InferenceResponse(outputs)
        return responses

    def _read(self, request) -> tuple[np.ndarray, list[list[int]], np.ndarray]:
        """The request's image tokens, per image the ids decoding starts from, and the labels
        to pass on (empty without)."""
        tokens = pb_utils.get_input_tensor_by_name(request, self.tokens_name).as_numpy()
        label = pb_utils.get_input_tensor_by_name(request, self.label_name)
        if label is None:
            empty = np.full((len(tokens), 1), b"", dtype=np.object_)
            return tokens, [self.settings.prefix() for _ in range(len(tokens))], empty
        labels = [value.decode("utf-8", errors="replace") for value in label.as_numpy().reshape(-1)]
        if len(labels) != len(tokens):
            raise ValueError(f"{len(labels)} labels for {len(tokens)} images")
        unknown = sorted({value for value in labels if value not in self.settings.prompts})
        if unknown:
            raise ValueError(f"{self.label_name} {unknown[0]!r} is not one of the exported labels")
        return tokens, [self.settings.prefix(value) for value in labels], label.as_numpy().reshape(-1, 1)

    def _step(self, image_tokens: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """The decoding step's logits, in calls of at most its max batch size (beams
        multiply the rows)."""
        parts = []
        for start in range(0, len(ids), self.step_rows):
            rows = slice(start, start + self.step_rows)
            inputs = [pb_utils.Tensor(self.tokens_name, image_tokens[rows]), pb_utils.Tensor(self.ids_name, ids[rows])]
            request = pb_utils.InferenceRequest(
                model_name=self.step_model, inputs=inputs, requested_output_names=[self.logits_name]
            )
            response = request.exec()
            if response.has_error():
                raise pb_utils.TritonModelException(response.error().message())
            parts.append(pb_utils.get_output_tensor_by_name(response, self.logits_name).as_numpy())
        return np.concatenate(parts)
