"""Triton Python-backend model: encoded images in, normalized pixel tensors out.

Each IMAGE element is an image file (JPEG, PNG, WebP, GIF, BMP, TIFF) as raw bytes, base64
or a data:image URI. The preprocessing (image_processing.py beside this file) reproduces the
model's own open_clip transform; its settings come from the config's `preprocess` parameter.
A bad image fails its request only, with a message naming the element. Each request is
admitted by its image count against the image encoder's backlog (admission.py) before any
decoding, or refused at once as overloaded.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from admission import Admission, work_units
from image_processing import ImageError, PreprocessSettings, preprocess


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config["parameters"].items()}
        self.settings = PreprocessSettings.from_json(params["preprocess"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.admission = Admission.from_parameters(params)

    def finalize(self) -> None:
        if self.admission is not None:
            self.admission.close()

    def execute(self, requests: list) -> list:
        return [self._one(request) for request in requests]

    def _one(self, request):
        images = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
        refusal = self.admission.refusal(work_units(len(images), 0)) if self.admission else None
        if refusal is not None:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(refusal, pb_utils.TritonError.UNAVAILABLE))
        pixels = []
        for index, image in enumerate(images):
            try:
                pixels.append(preprocess(image, self.settings))
            except ImageError as error:
                message = f"{self.input_name}[{index}] {error}"
                return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))
        return pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, np.stack(pixels))])
