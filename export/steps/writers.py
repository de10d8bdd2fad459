"""The Python-backend steps of pipelines, written into model folders.

Each writer copies the step's model.py (and its helper module) from its folder here,
writes the files it loads, and its config with the settings as parameters. The settings
classes also run the step's helper here, so an exporter can check what will be served before
writing it. No torch here.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from export.repository import config as model_config
from export.repository.config import Batching
from export.repository.layout import version_dir
from export.steps.admission import AdmissionSettings
from export.steps.caption_decoder.decoding import DecodingSettings
from export.steps.image_preprocess.image_processing import PreprocessSettings
from export.steps.index.actions import IndexSettings
from export.steps.tokenizer.tokenization import TextInput, load_tokenizer, token_arrays
from triton_embeddings.names import (
    ACTION,
    CAPTION,
    CLIP_INPUT_IDS,
    COUNT,
    EMBEDDING,
    FILTER,
    ID,
    IDS,
    LABEL,
    NEXT_TOKEN_LOGITS,
    PAYLOAD,
    PAYLOADS,
    SCORES,
    TOP_K,
    TensorSpec,
)

STEPS = Path(__file__).parent  # one folder per step kind: model.py and its helper module
SHARED_MODULES = (STEPS / "admission.py",)  # helpers of several steps, copied beside each model.py
# Steps whose model.py builds on other steps' modules (copied beside it, without their model.py).
BUILDS_ON = {"text_encoder": ("onnx_encoder", "tokenizer")}
TOKENIZER_FILE = "tokenizer.json"
DECODING_FILE = "decoding.json"


def add_python_model(model_dir: Path, kind: str) -> Path:
    """Copy the Python-backend `model.py` of `kind` (a folder of export/steps) and
    the helper modules beside it (and those of the steps it builds on) into the model's
    version folder."""
    source = STEPS / kind
    if not (source / "model.py").is_file():
        raise FileNotFoundError(f"no Python-backend model named {kind!r} in {STEPS}")
    target = version_dir(model_dir)
    helpers = [module for other in BUILDS_ON.get(kind, ()) for module in (STEPS / other).glob("*.py")]
    for module in [*helpers, *SHARED_MODULES]:
        if module.name not in ("__init__.py", "model.py"):
            shutil.copyfile(module, target / module.name)
    for module in source.glob("*.py"):
        if module.name != "__init__.py":
            shutil.copyfile(module, target / module.name)
    return target / "model.py"


@dataclass(frozen=True)
class TokenizerSettings:
    """How the served tokenizer tokenizes: what its model.py reads from the config."""

    tokenizer_json: str
    max_length: int
    padding_side: str
    pad_token_id: int
    pad_token: str
    prefix: str = ""
    clean: str = "none"
    pad_to_length: int = 0
    max_text_bytes: int = 1 << 20  # longer texts are refused; tokens past max_length are cut anyway

    @classmethod
    def from_model(cls, model_dir: Path) -> TokenizerSettings:
        """The settings of an exported tokenizer model, read back from its folder."""
        params = {key: value.string_value for key, value in model_config.read_config(model_dir).parameters.items()}
        text = (version_dir(model_dir) / params.pop("tokenizer_file")).read_text(encoding="utf-8")
        as_type = {field.name: int if field.type == "int" else str for field in fields(cls)}  # parameters are strings
        mine = {key: as_type[key](value) for key, value in params.items() if key in as_type}  # not admission's
        return cls(tokenizer_json=text, **mine)

    def load(self) -> Tokenizer:
        """The Rust tokenizer, set up as the served tokenizer model.py sets it up."""
        return load_tokenizer(
            self.tokenizer_json,
            max_length=self.max_length,
            padding_side=self.padding_side,
            pad_token_id=self.pad_token_id,
            pad_token=self.pad_token,
            pad_to_length=self.pad_to_length,
        )

    def tokenize(self, texts: Sequence[str], outputs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
        """Token arrays for `texts`, exactly as the served tokenizer emits them."""
        prepared = TextInput.from_parameters("texts", self.parameters()).prepare(texts)  # as the step reads them
        encodings = self.load().encode_batch(prepared)
        return token_arrays(encodings, {spec.name: spec.numpy_dtype for spec in outputs})

    def write_file(self, model_dir: Path) -> None:
        """The tokenizer.json that `parameters()` names, in the model's version folder."""
        (version_dir(model_dir) / TOKENIZER_FILE).write_text(self.tokenizer_json, encoding="utf-8")

    def parameters(self) -> dict[str, str]:
        values = asdict(self)
        del values["tokenizer_json"]  # a file of its own
        return {"tokenizer_file": TOKENIZER_FILE} | {key: str(value) for key, value in values.items()}


def write_tokenizer(
    model_dir: Path,
    name: str,
    settings: TokenizerSettings,
    text: TensorSpec,
    outputs: Sequence[TensorSpec],
    batching: Batching,
    admission: AdmissionSettings | None = None,
) -> None:
    """`admission`: the encoder and wait budget each request is admitted against (None: none)."""
    add_python_model(model_dir, "tokenizer")
    settings.write_file(model_dir)
    parameters = settings.parameters() | (admission.parameters() if admission else {})
    config = model_config.python_model(name, [model_config.model_input(text)], outputs, batching, parameters)
    model_config.write_config(config, model_dir)


def write_image_preprocess(
    model_dir: Path,
    name: str,
    settings: PreprocessSettings,
    image: TensorSpec,
    pixels: TensorSpec,
    batching: Batching,
    admission: AdmissionSettings | None = None,
) -> None:
    add_python_model(model_dir, "image_preprocess")
    parameters = {"preprocess": settings.to_json()} | (admission.parameters() if admission else {})
    config = model_config.python_model(name, [model_config.model_input(image)], [pixels], batching, parameters)
    model_config.write_config(config, model_dir)


def classifier_parameters(labels: Sequence[str]) -> dict[str, str]:
    """The labels, in SCORES order, readable from the classify ensemble's config."""
    return {"labels": json.dumps(list(labels), ensure_ascii=False)}


# The index step's tensors by role (actions.py reads them by role, so names live in one place).
INDEX_INPUTS = {"vector": EMBEDDING, "top_k": TOP_K, "filter": FILTER, "id": ID, "payload": PAYLOAD, "action": ACTION}
INDEX_OUTPUTS = {"ids": IDS, "scores": SCORES, "payloads": PAYLOADS, "count": COUNT}


def index_tensors() -> dict[str, str]:
    return {role: spec.name for role, spec in (INDEX_INPUTS | INDEX_OUTPUTS).items()}


def write_index(model_dir: Path, name: str, settings: IndexSettings, max_batch_size: int) -> None:
    """The index step of a collection: every input optional (each action takes some of them),
    one instance (the embedded engine's folder takes one process), no queue delay."""
    add_python_model(model_dir, "index")
    settings = replace(settings, tensors=index_tensors())
    specs = {
        role: spec.with_dims(settings.dimension) if role == "vector" else spec for role, spec in INDEX_INPUTS.items()
    }
    inputs = [model_config.model_input(spec, optional=True) for spec in specs.values()]
    batching = Batching(max_batch_size=max_batch_size)
    config = model_config.python_model(name, inputs, INDEX_OUTPUTS.values(), batching, settings.parameters())
    model_config.write_config(config, model_dir)


def write_caption_decoder(
    model_dir: Path,
    name: str,
    settings: DecodingSettings,
    image_tokens: TensorSpec,
    decoding_step: str,
    decoding_step_max_batch_size: int,
    batching: Batching,
) -> None:
    """IMAGE_TOKENS (and an optional LABEL to start from its prompt) -> CAPTION, and LABEL
    passed on (see names.PROMPT_LABEL), calling the `decoding_step` model through BLS for
    every token."""
    add_python_model(model_dir, "caption_decoder")
    (version_dir(model_dir) / DECODING_FILE).write_text(settings.to_json(), encoding="utf-8")
    parameters = {
        "settings_file": DECODING_FILE,
        "decoding_step": decoding_step,
        "decoding_step_max_batch_size": str(decoding_step_max_batch_size),
        "image_tokens": image_tokens.name,
        "label": LABEL.name,
        "input_ids": CLIP_INPUT_IDS.name,
        "logits": NEXT_TOKEN_LOGITS.name,
    }
    inputs = [model_config.model_input(image_tokens), model_config.model_input(LABEL, optional=True)]
    config = model_config.python_model(name, inputs, [CAPTION, LABEL], batching, parameters)
    model_config.write_config(config, model_dir)
