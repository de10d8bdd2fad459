"""Triton Python-backend model: image embeddings in, the best label and per-label scores out.

Zero-shot classification as CLIP does it: cosine similarity of the (unit) image embedding
with each label's text embedding, computed at export and stored beside this file, scaled by
the model's logit scale, then softmaxed over the labels (CLIP) or, for SigLIP models, shifted
by the model's logit bias and put through a sigmoid per label (`scores` parameter). Labels are
in the config's `labels` parameter (a JSON list), in the order of SCORES.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config["parameters"].items()}
        self.input_name = config["input"][0]["name"]
        self.label_name, self.scores_name = (output["name"] for output in config["output"])
        self.labels = np.array([label.encode() for label in json.loads(params["labels"])], dtype=np.object_)
        folder = Path(args["model_repository"]) / args["model_version"]
        self.label_embeddings = np.load(folder / params["label_embeddings_file"]).astype(np.float32)
        self.logit_scale = np.float32(params["logit_scale"])
        self.logit_bias = np.float32(params.get("logit_bias", 0.0))
        self.sigmoid = params.get("scores") == "sigmoid"

    def execute(self, requests: list) -> list:
        embeddings = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        logits = self.logit_scale * (np.concatenate(embeddings) @ self.label_embeddings.T)
        if self.sigmoid:
            scores = 1 / (1 + np.exp(-(logits + self.logit_bias)))
        else:
            scores = np.exp(logits - logits.max(axis=1, keepdims=True))
            scores /= scores.sum(axis=1, keepdims=True)
        best = self.labels[scores.argmax(axis=1)].reshape(-1, 1)
        responses, start = [], 0
        for batch in embeddings:
            rows = slice(start, start + len(batch))
            start += len(batch)
            outputs = [pb_utils.Tensor(self.label_name, best[rows]), pb_utils.Tensor(self.scores_name, scores[rows])]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
