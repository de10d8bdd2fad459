"""Triton Python-backend model: texts in, the encoder's token tensors out.

Loads the `tokenizer.json` export wrote beside this file. Truncation length, padding and an
optional prompt prefix come from the config's parameters; which tensors to emit comes from
the config's outputs. All texts of one execute() (every request the dynamic batcher merged)
are tokenized in one call and padded to the longest of them, so these requests leave with
tensors of one shape and can be merged again by the encoder's batcher.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Encoding, Tokenizer

# Output tensor name -> the Encoding attribute that holds it.
_ENCODING_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def _decode_texts(texts: np.ndarray, input_name: str) -> list[str]:
    """Decode a [batch, 1] BYTES tensor; name the first bad element in the error."""
    decoded = []
    for index, raw in enumerate(texts.reshape(-1)):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            reason = f"{error.reason} at byte {error.start}"
            raise ValueError(f"{input_name}[{index}] is not valid UTF-8: {reason}") from None
        if not text:
            raise ValueError(f"{input_name}[{index}] is an empty string; send at least one character")
        decoded.append(text)
    return decoded


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config["parameters"].items()}
        self.input_name = config["input"][0]["name"]
        self.fields = {out["name"]: _ENCODING_FIELDS[out["name"]] for out in config["output"]}
        self.prefix = params.get("prefix", "")

        folder = Path(args["model_repository"]) / args["model_version"]
        self.tokenizer = Tokenizer.from_file(str(folder / params["tokenizer_file"]))
        self.tokenizer.enable_truncation(max_length=int(params["max_length"]))
        self.tokenizer.enable_padding(
            direction=params["padding_side"], pad_id=int(params["pad_token_id"]), pad_token=params["pad_token"]
        )

    def execute(self, requests: list) -> list:
        texts, errors = [], []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            try:
                texts.append([self.prefix + text for text in _decode_texts(tensor, self.input_name)])
                errors.append(None)
            except ValueError as error:
                texts.append([])
                errors.append(pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG))

        encodings = self.tokenizer.encode_batch([text for batch in texts for text in batch])
        responses, start = [], 0
        for batch, error in zip(texts, errors, strict=True):
            if error is not None:
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            mine = encodings[start : start + len(batch)]
            start += len(batch)
            responses.append(pb_utils.InferenceResponse(output_tensors=self._tensors(mine)))
        return responses

    def _tensors(self, encodings: list[Encoding]) -> list:
        return [
            pb_utils.Tensor(name, np.array([getattr(e, field) for e in encodings], dtype=np.int64))
            for name, field in self.fields.items()
        ]
