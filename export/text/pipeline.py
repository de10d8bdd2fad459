"""Export a sentence-transformers model as a Triton text pipeline.

Three models, named by `names.TextPipelineNames`:
- `<name>_tokenizer`: Python backend, TEXT -> token tensors (tokenizers, batch-wide padding);
- `<name>_encoder`: the ONNX graph (transformer, pooling, normalize) on the chosen runtime;
- `<name>`: the ensemble clients call, TEXT -> EMBEDDING.

With `tokenize_in_encoder` (python runtime), one: `<name>` is the encoder, which takes TEXT and
tokenizes itself (steps/text_encoder). Clients call it directly: an ensemble of one step would
only add its own hop (docs/performance.md, "Tokenizer and encoder in one step").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from export import runtimes
from export.errors import InvalidArgumentError
from export.exporter import pre_checks, precision_pass, write_ensemble
from export.precision.int8 import CALIBRATION_ODD_TEXTS, CALIBRATION_TEXTS
from export.repository.config import EnsembleStep
from export.repository.layout import DEFAULT_REPOSITORY, version_dir
from export.repository.records import PipelineRecord, staged_pipeline
from export.runtimes import ONNX_FILE, EncoderModel, ServingOptions
from export.steps.writers import TokenizerSettings, write_tokenizer
from export.text.model import TextModel, load_text_model
from export.text.trace import check_text_onnx, export_text_onnx
from export.tools.payloads import odd_texts
from export.tools.payloads import texts as generated_texts
from export.tools.perf_analyzer import write_pipeline_input
from export.validation import DEFAULT_OPSET, Agreement
from triton_embeddings.names import EMBEDDING, INPUT_IDS, TEXT, TextPipelineNames

TYPICAL_TOKENS = 32  # a query or a sentence: warm-up and TensorRT's optimal shape


@dataclass(frozen=True)
class TextExportOptions:
    """What `python -m export text` was asked for."""

    model: str
    name: str
    repository: Path = DEFAULT_REPOSITORY
    serving: ServingOptions = field(default_factory=ServingOptions)
    max_length: int | None = None
    opset: int = DEFAULT_OPSET
    precision: str = "fp32"
    max_text_bytes: int = TokenizerSettings.max_text_bytes
    prompt_name: str | None = None
    trust_remote_code: bool = False
    tokenize_in_encoder: bool = False

    def __post_init__(self) -> None:
        if not self.tokenize_in_encoder:
            return
        if self.serving.runtime != "python":
            raise InvalidArgumentError("--tokenize-in-encoder applies to --runtime python (a Python-backend encoder)")
        if self.serving.max_wait_ms:
            raise InvalidArgumentError(
                "--max-wait-ms needs the tokenizer step: it admits requests before they queue for the encoder; "
                "with --tokenize-in-encoder, bound the queue with --max-queue-size and --queue-timeout-ms"
            )
        if self.serving.step_instances:
            raise InvalidArgumentError("--tokenizer-instances needs the tokenizer step; --instances counts encoders")

    def served(self) -> ServingOptions:
        """The serving options as exported: with the tokenizer in the encoder there is no step
        to admit by work, and no queue bound unless asked for (a queue policy costs Triton's
        batcher its prefetching: docs/performance.md, "The 500 ms stall")."""
        if not self.tokenize_in_encoder:
            return self.serving
        queue, timeout = self.serving.max_queue_size, self.serving.queue_timeout_ms
        return replace(self.serving, max_wait_ms=0, max_queue_size=queue or 0, queue_timeout_ms=timeout or 0)


@dataclass(frozen=True)
class TextExport:
    record: PipelineRecord
    max_length: int
    agreement: Agreement
    repository: Path


def export_text(options: TextExportOptions) -> TextExport:
    """Load, convert, check against sentence-transformers, then write the three models."""
    names = TextPipelineNames(options.name)
    serving = options.served()
    tokenizer_batching, encoder_batching = pre_checks(names.ensemble, serving, options.precision)
    text_model = load_text_model(
        options.model,
        max_length=options.max_length,
        prompt_name=options.prompt_name,
        trust_remote_code=options.trust_remote_code,
    )
    record = PipelineRecord(
        name=names.ensemble,
        kind="text",
        runtime=serving.runtime,
        precision=options.precision,
        embedding_size=text_model.dimension,
        ensembles=(names.ensemble,),
        steps=() if options.tokenize_in_encoder else names.steps,
    )
    # One step: the encoder is the model clients call, so its folder is the pipeline's name.
    encoder_name = names.ensemble if options.tokenize_in_encoder else names.encoder
    with staged_pipeline(options.repository, record) as staging:
        onnx_path = version_dir(staging / encoder_name) / ONNX_FILE
        export_text_onnx(text_model, onnx_path, opset=options.opset)
        agreement = precision_pass(
            options.precision,
            [onnx_path],
            lambda **tolerance: check_text_onnx(text_model, onnx_path, **tolerance),
            calibration=[lambda: _calibration_feeds(text_model)],
        )
        longest = text_model.tokenizer.max_length
        encoder = EncoderModel(
            name=encoder_name,
            inputs=text_model.inputs,
            output=EMBEDDING.with_dims(text_model.dimension),
            batching=encoder_batching,
            sequence=(1, min(TYPICAL_TOKENS, longest), longest),
            pad_values={INPUT_IDS.name: text_model.tokenizer.pad_token_id},
            padding_side=text_model.tokenizer.padding_side,
            precision=options.precision,
        )
        tokenizer = replace(text_model.tokenizer, max_text_bytes=options.max_text_bytes)
        if options.tokenize_in_encoder:
            runtimes.write_text_encoder(staging / encoder_name, encoder, serving, tokenizer, TEXT, record.parameters())
            write_pipeline_input(staging / encoder_name, TEXT)
        else:
            runtimes.write_encoder(staging / names.encoder, encoder, serving)
            write_tokenizer(
                staging / names.tokenizer,
                names.tokenizer,
                tokenizer,
                TEXT,
                text_model.inputs,
                tokenizer_batching,
                serving.admission(names.encoder),
            )
            write_text_ensemble(staging / names.ensemble, names, text_model, serving, record)
    return TextExport(record, text_model.tokenizer.max_length, agreement, options.repository)


def _calibration_feeds(text_model: TextModel, batch: int = 32) -> Iterator[dict[str, np.ndarray]]:
    """Token tensors of generated texts of every length (queries to truncated passages)."""
    texts = generated_texts(CALIBRATION_TEXTS - CALIBRATION_ODD_TEXTS, seed=7) + odd_texts(
        CALIBRATION_ODD_TEXTS, seed=7
    )
    for start in range(0, len(texts), batch):
        yield text_model.tokenize(texts[start : start + batch])


def write_text_ensemble(
    model_dir: Path, names: TextPipelineNames, text_model: TextModel, serving: ServingOptions, record: PipelineRecord
) -> None:
    """TEXT -> tokenizer -> token tensors -> encoder -> EMBEDDING."""
    output = EMBEDDING.with_dims(text_model.dimension)
    steps = [
        EnsembleStep.chain(names.tokenizer, [TEXT], text_model.inputs),
        EnsembleStep.chain(names.encoder, text_model.inputs, [output]),
    ]
    max_batch_size = serving.batching()[1].max_batch_size
    write_ensemble(
        model_dir, [TEXT], [output], steps, max_batch_size, record.parameters(), response_cache=serving.cache()
    )
