"""The one place that names things: pipelines, their models, and the tensors between them.

Exporter, Python-backend models (through the configs written from here), client, tests, load
tests and docs all take names and dtypes from this module, so a rename happens in one line.
It lives in the client package because the client needs it and must not import the exporter.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# The pipeline Triton serves by default (`make serve`): sentence-transformers/all-MiniLM-L6-v2.
DEFAULT_TEXT_PIPELINE = "all-MiniLM-L6-v2"
DEFAULT_INT8_PIPELINE = f"{DEFAULT_TEXT_PIPELINE}-int8"  # the same, --precision int8 (tests, benchmarks)
# The prompt each zero-shot label is put in, unless export is given others.
DEFAULT_TEMPLATE = "a photo of {}."

# Triton's ModelConfig data types, keyed by the KServe v2 datatype clients send.
_TRITON_TYPES = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32", "INT64": "TYPE_INT64", "INT32": "TYPE_INT32"}
_NUMPY_TYPES = {"BYTES": np.object_, "FP32": np.float32, "INT64": np.int64, "INT32": np.int32}


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as Triton sees it: name, KServe v2 datatype and dims without the batch axis.

    -1 marks a dynamic axis. Dims that depend on the model (the embedding size) are filled in
    with `with_dims` at export time.
    """

    name: str
    datatype: str
    dims: tuple[int, ...]

    @property
    def config_type(self) -> str:
        """The ModelConfig DataType enum name, e.g. TYPE_STRING for BYTES."""
        return _TRITON_TYPES[self.datatype]

    @property
    def numpy_dtype(self) -> type[np.generic]:
        return _NUMPY_TYPES[self.datatype]

    def with_dims(self, *dims: int) -> TensorSpec:
        return replace(self, dims=tuple(dims))

    def dynamic_axes(self) -> dict[int, str]:
        """The axes that vary from request to request, batch included, as ONNX export's
        `dynamic_axes` takes them: every -1 left after `with_dims` (token sequences)."""
        varying = [axis + 1 for axis, dim in enumerate(self.dims) if dim < 0]
        names = ["sequence"] if len(varying) == 1 else [f"axis{axis}" for axis in varying]
        return {0: "batch", **dict(zip(varying, names, strict=True))}


# What clients send and receive.
TEXT = TensorSpec("TEXT", "BYTES", (1,))
EMBEDDING = TensorSpec("EMBEDDING", "FP32", (-1,))
IMAGE = TensorSpec("IMAGE", "BYTES", (1,))  # an encoded image file: raw bytes, base64 or data URI
LABEL = TensorSpec("LABEL", "BYTES", (1,))  # zero-shot classification: the best label
# Zero-shot: a softmax over the labels (SigLIP: a sigmoid per label); search: per hit, higher is closer.
SCORES = TensorSpec("SCORES", "FP32", (-1,))
CAPTION = TensorSpec("CAPTION", "BYTES", (1,))  # CoCa: the image's caption, UTF-8 text

# Between tokenizer and encoder: the Hugging Face names, so the ONNX graph reads like the model.
INPUT_IDS = TensorSpec("input_ids", "INT64", (-1,))
ATTENTION_MASK = TensorSpec("attention_mask", "INT64", (-1,))
TOKEN_TYPE_IDS = TensorSpec("token_type_ids", "INT64", (-1,))

# CLIP steps. Token ids are int32: the text tower pools at the argmax of the ids, and ONNX
# Runtime's ArgMax has int32 kernels on every version (int64 only on recent ones).
CLIP_INPUT_IDS = TensorSpec("input_ids", "INT32", (-1,))
PIXEL_VALUES = TensorSpec("pixel_values", "FP32", (3, -1, -1))
# CoCa captions: what the text decoder attends to (tokens x width, filled in at export), and
# the next token's logits over the vocabulary at the last position of the ids so far.
IMAGE_TOKENS = TensorSpec("image_tokens", "FP32", (-1, -1))
NEXT_TOKEN_LOGITS = TensorSpec("logits", "FP32", (-1,))
# Inside classify_caption, the classifier's LABEL on its way to the caption decoder, which
# passes it on as the ensemble's LABEL: Triton 2.51 deadlocks a request that asks for some of
# an ensemble's outputs when one of them also feeds another step.
PROMPT_LABEL = TensorSpec("prompt_label", "BYTES", (1,))


@dataclass(frozen=True)
class TextPipelineNames:
    """Model names of one text pipeline: the ensemble clients call and its two steps."""

    ensemble: str

    @property
    def tokenizer(self) -> str:
        return f"{self.ensemble}_tokenizer"

    @property
    def encoder(self) -> str:
        return f"{self.ensemble}_encoder"

    @property
    def steps(self) -> tuple[str, ...]:
        return (self.tokenizer, self.encoder)

    @property
    def models(self) -> tuple[str, ...]:
        return (self.ensemble, *self.steps)


@dataclass(frozen=True)
class ClipPipelineNames:
    """Model names of one CLIP export: the ensembles clients call, and their steps. `classify`:
    exported with labels; `caption`: a CoCa model, whose captions are served too."""

    name: str

    @property
    def text(self) -> str:
        """Ensemble TEXT -> EMBEDDING."""
        return f"{self.name}_text"

    @property
    def image(self) -> str:
        """Ensemble IMAGE -> EMBEDDING."""
        return f"{self.name}_image"

    @property
    def classify(self) -> str:
        """Ensemble IMAGE -> LABEL, SCORES (only when exported with labels)."""
        return f"{self.name}_classify"

    @property
    def caption(self) -> str:
        """Ensemble IMAGE -> CAPTION (CoCa models only)."""
        return f"{self.name}_caption"

    @property
    def classify_caption(self) -> str:
        """Ensemble IMAGE -> LABEL, SCORES, and a CAPTION that starts from a prompt naming the
        label (CoCa models exported with labels)."""
        return f"{self.name}_classify_caption"

    @property
    def text_tokenizer(self) -> str:
        return f"{self.name}_text_tokenizer"

    @property
    def text_encoder(self) -> str:
        return f"{self.name}_text_encoder"

    @property
    def image_preprocess(self) -> str:
        return f"{self.name}_image_preprocess"

    @property
    def image_encoder(self) -> str:
        return f"{self.name}_image_encoder"

    @property
    def classifier(self) -> str:
        return f"{self.name}_classifier"

    @property
    def caption_image_encoder(self) -> str:
        """ONNX: pixels -> IMAGE_TOKENS, what CoCa's text decoder attends to."""
        return f"{self.name}_caption_image_encoder"

    @property
    def caption_decoding_step(self) -> str:
        """ONNX: IMAGE_TOKENS, token ids so far -> the next token's logits."""
        return f"{self.name}_caption_decoding_step"

    @property
    def caption_decoder(self) -> str:
        """Python: the decoding loop (greedy or beam), calling the decoding step each token."""
        return f"{self.name}_caption_decoder"

    def ensembles(self, *, classify: bool, caption: bool = False) -> tuple[str, ...]:
        ensembles = (self.text, self.image, self.classify) if classify else (self.text, self.image)
        if caption:
            ensembles += (self.caption, self.classify_caption) if classify else (self.caption,)
        return ensembles

    def steps(self, *, classify: bool, caption: bool = False) -> tuple[str, ...]:
        steps = (self.text_tokenizer, self.text_encoder, self.image_preprocess, self.image_encoder)
        steps = (*steps, self.classifier) if classify else steps
        if caption:
            steps += (self.caption_image_encoder, self.caption_decoding_step, self.caption_decoder)
        return steps

    def models(self, *, classify: bool, caption: bool = False) -> tuple[str, ...]:
        return self.ensembles(classify=classify, caption=caption) + self.steps(classify=classify, caption=caption)


# Search (docs/search.md). A collection's index step takes query vectors or points to store;
# its ensembles put a pipeline's steps in front of it. Every input but the item is optional.
TOP_K = TensorSpec("TOP_K", "INT32", (1,))  # hits per query (default: the collection's)
FILTER = TensorSpec("FILTER", "BYTES", (1,))  # a JSON filter over payloads (docs/search.md)
IDS = TensorSpec("IDS", "INT64", (-1,))  # per query: the hits' ids, closest first; -1 pads to k (and SCORES)
PAYLOADS = TensorSpec("PAYLOADS", "BYTES", (-1,))  # per query: each hit's payload as JSON ("null" pads)
ID = TensorSpec("ID", "INT64", (1,))  # per item to store or delete: its id, >= 0
PAYLOAD = TensorSpec("PAYLOAD", "BYTES", (1,))  # per item to store: a JSON object (default {})
COUNT = TensorSpec("COUNT", "INT64", (1,))  # per item: points written, deleted, found or counted
ACTION = TensorSpec("ACTION", "BYTES", (1,))  # index step only: one of INDEX_ACTIONS per item
# What the index step does with a request. Without ACTION: "upsert" when it has ID, else "search".
# Deleting must be asked for by name.
INDEX_ACTIONS = ("search", "upsert", "delete", "count", "exists")
DEFAULT_TOP_K = 10
DEFAULT_MAX_TOP_K = 1000


@dataclass(frozen=True)
class CollectionNames:
    """Model names of one search collection: its index step and the ensembles over it. A text
    pipeline gives `search` and `upsert`; a CLIP pipeline `image_search`, `text_search` and
    `image_upsert`."""

    name: str

    @property
    def index(self) -> str:
        """The index step: vectors in (search, upsert), and delete, count, exists."""
        return f"{self.name}_index"

    @property
    def search(self) -> str:
        return f"{self.name}_search"

    @property
    def upsert(self) -> str:
        return f"{self.name}_upsert"

    @property
    def text_search(self) -> str:
        return f"{self.name}_text_search"

    @property
    def image_search(self) -> str:
        return f"{self.name}_image_search"

    @property
    def image_upsert(self) -> str:
        return f"{self.name}_image_upsert"

    def ensembles(self, kind: str) -> tuple[str, ...]:
        """The ensembles over a `kind` ("text" or "clip") pipeline."""
        return (
            (self.search, self.upsert) if kind == "text" else (self.image_search, self.text_search, self.image_upsert)
        )
