"""Triton Python-backend model: texts in, the encoder's token tensors out.

Loads the `tokenizer.json` export wrote beside this file. Text cleaning, truncation, padding
and a prompt prefix come from the config's parameters; which tensors to emit, and their
integer type, from the config's outputs. All texts of one execute() (every request the
dynamic batcher merged) are tokenized in one call and padded to one length, so these
requests leave with tensors of one shape and can be merged again by the encoder's batcher.
Each request is admitted against the encoder's backlog (admission.py), or refused at once as
overloaded: before tokenizing if the work queued ahead is already past the wait budget, else
by its own tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils
from admission import Admission, work_units
from tokenization import TextInput, token_arrays, tokenizer_from_parameters


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config["parameters"].items()}
        self.text = TextInput.from_parameters(config["input"][0]["name"], params)
        self.dtypes = {out["name"]: pb_utils.triton_string_to_numpy(out["data_type"]) for out in config["output"]}
        self.pad_to_length = int(params.get("pad_to_length", "0"))
        folder = Path(args["model_repository"]) / args["model_version"]
        self.tokenizer = tokenizer_from_parameters(params, folder)
        self.admission = Admission.from_parameters(params)

    def finalize(self) -> None:
        if self.admission is not None:
            self.admission.close()

    def _refused(self, encodings: list | None = None) -> pb_utils.TritonError | None:
        """None, or the error refusing a request as more than the wait budget allows: before
        tokenizing (`encodings` None) on the work queued ahead alone, after on its own tokens too."""
        if self.admission is None:
            return None
        units = None
        if encodings is not None:
            tokens = sum(len(e.attention_mask) if self.pad_to_length else sum(e.attention_mask) for e in encodings)
            units = work_units(len(encodings), tokens)
        refusal = self.admission.refusal(units)
        return None if refusal is None else pb_utils.TritonError(refusal, pb_utils.TritonError.UNAVAILABLE)

    def execute(self, requests: list) -> list:
        texts, errors = [], []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, self.text.name).as_numpy()
            try:
                decoded = self.text.decode(tensor)
                refused = self._refused()  # before the tokenizer spends time on texts it would refuse
                texts.append([] if refused else self.text.prepare(decoded))
                errors.append(refused)
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
            refused = self._refused(mine)
            if refused is not None:
                responses.append(pb_utils.InferenceResponse(error=refused))
                continue
            arrays = token_arrays(mine, self.dtypes)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, a) for n, a in arrays.items()]))
        return responses
