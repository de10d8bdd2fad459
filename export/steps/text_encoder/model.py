"""Triton Python-backend model: texts in, embeddings out, tokenizer and encoder in one process.

The same work as the tokenizer step followed by the onnx_encoder step (tokenization.py, then
encoding.py), without the hop between them: one stub round trip fewer per request. Clients
call this model by the pipeline's name, with no ensemble in front, which saves that hop too:
together most of the serving path's fixed cost (docs/performance.md, "Tokenizer and encoder
in one step"). The price: tokenizing no longer overlaps encoding in another process, and
there is no entry step to admit requests by work before they queue here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from encoding import OnnxEncoder, invalid
from tokenization import TextInput, token_arrays, tokenizer_from_parameters


class TritonPythonModel(OnnxEncoder):
    def initialize(self, args: dict[str, str]) -> None:
        super().initialize(args)
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config["parameters"].items()}
        self.text = TextInput.from_parameters(config["input"][0]["name"], params)
        # The graph's token inputs, in the order the encoder feeds them, and their dtypes.
        self.token_dtypes = {name: np.dtype(dtype) for name, dtype in json.loads(params["token_inputs"]).items()}
        self.input_names = list(self.token_dtypes)
        folder = Path(args["model_repository"]) / args["model_version"]
        self.tokenizer = tokenizer_from_parameters(params, folder)

    def _inputs(self, requests: list) -> list:
        """All texts of the batch tokenized in one call; a request with a bad text is refused
        alone, naming it."""
        texts: list = []  # per request: its cleaned texts, or the response refusing it
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, self.text.name).as_numpy()
            try:
                texts.append(self.text.prepare(self.text.decode(tensor)) or invalid("the request holds no texts"))
            except ValueError as error:
                texts.append(invalid(str(error)))
        encodings = self.tokenizer.encode_batch([text for batch in texts if isinstance(batch, list) for text in batch])
        found, start = [], 0
        for batch in texts:
            if not isinstance(batch, list):
                found.append(batch)
                continue
            arrays = token_arrays(encodings[start : start + len(batch)], self.token_dtypes)
            start += len(batch)
            found.append([arrays[name] for name in self.input_names])
        return found
