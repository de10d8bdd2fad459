"""Export an open_clip model as Triton pipelines, named by `names.ClipPipelineNames`:

- `<name>_text`: TEXT -> EMBEDDING (`_text_tokenizer`, Python; `_text_encoder`, ONNX);
- `<name>_image`: IMAGE -> EMBEDDING (`_image_preprocess`, Python; `_image_encoder`, ONNX);
- `<name>_classify` (with labels): IMAGE -> LABEL, SCORES (the image steps, then
  `_classifier`, Python, holding the labels' text embeddings computed here);
- CoCa models: `<name>_caption` and, with labels, `<name>_classify_caption`
  (caption_pipeline.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from export import runtimes
from export.clip.caption import CaptionOptions
from export.clip.caption_pipeline import CaptionExport, captions_for, check_caption_serving, write_captions
from export.clip.model import ClipModel, load_clip_model
from export.clip.trace import calibration_feeds, check_clip_onnx, export_clip_onnx, label_embeddings
from export.clip.zero_shot import write_classifier_onnx
from export.errors import InvalidArgumentError
from export.exporter import pre_checks, precision_pass, write_ensemble
from export.repository.config import Batching, EnsembleStep
from export.repository.layout import DEFAULT_REPOSITORY, version_dir
from export.repository.records import PipelineRecord, staged_pipeline
from export.runtimes import ONNX_FILE, EncoderModel, ServingOptions
from export.steps.image_preprocess.image_processing import PreprocessSettings
from export.steps.writers import (
    TokenizerSettings,
    classifier_parameters,
    write_image_preprocess,
    write_tokenizer,
)
from export.validation import DEFAULT_OPSET, Agreement
from triton_embeddings.names import (
    CLIP_INPUT_IDS,
    DEFAULT_TEMPLATE,
    EMBEDDING,
    IMAGE,
    LABEL,
    PIXEL_VALUES,
    SCORES,
    TEXT,
    ClipPipelineNames,
)


@dataclass(frozen=True)
class ClipExportOptions:
    """What `python -m export clip` was asked for."""

    arch: str
    name: str
    pretrained: str | None  # a tag, a checkpoint file, "none" (random weights); None: not given
    repository: Path = DEFAULT_REPOSITORY
    serving: ServingOptions = field(default_factory=ServingOptions)
    labels: tuple[str, ...] = ()
    templates: tuple[str, ...] = (DEFAULT_TEMPLATE,)
    opset: int = DEFAULT_OPSET
    precision: str = "fp32"
    draft: bool = True
    max_text_bytes: int = TokenizerSettings.max_text_bytes
    max_image_bytes: int = PreprocessSettings.max_bytes
    max_pixels: int = PreprocessSettings.max_pixels
    caption: CaptionOptions | None = None  # CoCa captions as asked; None: CoCa models get the defaults
    captions: bool = True  # False: CoCa models get their embedding (and classify) pipelines only


@dataclass(frozen=True)
class ClipExport:
    record: PipelineRecord
    labels: tuple[str, ...]
    text: Agreement
    image: Agreement
    repository: Path


def read_labels(path: Path) -> tuple[str, ...]:
    """One label a line; blank lines skipped; duplicates refused (SCORES would be ambiguous)."""
    labels = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not labels:
        raise InvalidArgumentError(f"{path} holds no labels (one a line)")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise InvalidArgumentError(f"{path}: duplicate labels {duplicates}")
    return labels


def _check_templates(templates: Sequence[str]) -> None:
    for template in templates:
        if template.count("{}") != 1:
            raise InvalidArgumentError(f"template {template!r} must hold exactly one {{}} for the label")


def export_clip(options: ClipExportOptions) -> ClipExport:
    """Load, convert, check against open_clip, then write every model."""
    names = ClipPipelineNames(options.name)
    _check_templates(options.templates)
    python_batching, encoder_batching = pre_checks(names.name, options.serving, options.precision)
    if options.caption is not None:
        check_caption_serving(options.serving)
    clip = load_clip_model(options.arch, options.pretrained, draft=options.draft)
    classify = bool(options.labels)
    captions = captions_for(options.arch, options.pretrained, clip, options.caption, wanted=options.captions)
    record = PipelineRecord(
        name=names.name,
        kind="clip",
        runtime=options.serving.runtime,
        precision=options.precision,
        embedding_size=clip.dimension,
        ensembles=names.ensembles(classify=classify, caption=captions is not None),
        steps=names.steps(classify=classify, caption=captions is not None),
    )
    with staged_pipeline(options.repository, record) as staging:
        text_onnx = version_dir(staging / names.text_encoder) / ONNX_FILE
        image_onnx = version_dir(staging / names.image_encoder) / ONNX_FILE
        export_clip_onnx(clip, text_onnx, image_onnx, opset=options.opset)
        text_agreement, image_agreement = precision_pass(
            options.precision,
            [text_onnx, image_onnx],
            lambda **tolerance: check_clip_onnx(clip, text_onnx, image_onnx, **tolerance),
            calibration=calibration_feeds(clip),
        )

        ids, pixels, embedding = clip.text_input, clip.image_input, clip.embedding
        for encoder_name, encoder_input in ((names.text_encoder, ids), (names.image_encoder, pixels)):
            encoder = EncoderModel(
                encoder_name, [encoder_input], embedding, encoder_batching, precision=options.precision
            )
            runtimes.write_encoder(staging / encoder_name, encoder, options.serving)
        tokenizer = replace(clip.tokenizer, max_text_bytes=options.max_text_bytes)
        serving = options.serving
        text_admission, image_admission = serving.admission(names.text_encoder), serving.admission(names.image_encoder)
        text_tokenizer = staging / names.text_tokenizer
        write_tokenizer(text_tokenizer, names.text_tokenizer, tokenizer, TEXT, [ids], python_batching, text_admission)
        preprocess = replace(clip.preprocess, max_bytes=options.max_image_bytes, max_pixels=options.max_pixels)
        write_image_preprocess(
            staging / names.image_preprocess,
            names.image_preprocess,
            preprocess,
            IMAGE,
            pixels,
            python_batching,
            image_admission,
        )
        _write_ensembles(staging, names, clip, encoder_batching.max_batch_size, record, options.serving.cache())
        if classify:
            # The classifier follows the image encoder, whose queue the entry steps bound.
            _write_classify(staging, names, clip, options, python_batching.unbounded(), record)
        if captions is not None:
            caption = CaptionExport(captions, options.labels, serving, options.opset, serving.cache())
            write_captions(staging, names, clip, caption, (python_batching, encoder_batching), record)
    return ClipExport(record, options.labels, text_agreement, image_agreement, options.repository)


def _write_ensembles(
    staging: Path,
    names: ClipPipelineNames,
    clip: ClipModel,
    max_batch_size: int,
    record: PipelineRecord,
    cache: bool,
) -> None:
    """TEXT -> tokenizer -> ids -> text encoder, and IMAGE -> preprocess -> pixels -> image encoder."""
    embedding = clip.embedding
    for ensemble, first, encoder, source, between in (
        (names.text, names.text_tokenizer, names.text_encoder, TEXT, CLIP_INPUT_IDS),
        (names.image, names.image_preprocess, names.image_encoder, IMAGE, PIXEL_VALUES),
    ):
        steps = [EnsembleStep.chain(first, [source], [between]), EnsembleStep.chain(encoder, [between], [embedding])]
        write_ensemble(
            staging / ensemble, [source], [embedding], steps, max_batch_size, record.parameters(), response_cache=cache
        )


def _classifier_serving(serving: ServingOptions) -> ServingOptions:
    """On the python runtime, the encoders' (not admitted against: its cost is the encoder's).
    On GPUs, ONNX Runtime without TensorRT, whatever the encoders run on: TensorRT has no
    string tensors, and a matrix product over the labels gains nothing from an engine."""
    if serving.runtime == "python":
        return replace(serving, max_wait_ms=0)
    return replace(
        serving,
        runtime="onnxruntime",
        tensorrt=False,
        tensorrt_fp16=False,
        tensorrt_cache=None,
        tensorrt_batch=None,
        tensorrt_sequence=None,
    )


def _write_classify(
    staging: Path,
    names: ClipPipelineNames,
    clip: ClipModel,
    options: ClipExportOptions,
    batching: Batching,
    record: PipelineRecord,
) -> None:
    """The classifier step (an ONNX graph, zero_shot.py), and the ensemble IMAGE -> preprocess
    -> image encoder -> classifier."""
    embeddings = label_embeddings(clip, list(options.labels), list(options.templates))
    model_dir = staging / names.classifier
    write_classifier_onnx(
        version_dir(model_dir) / ONNX_FILE,
        options.labels,
        embeddings,
        logit_scale=clip.logit_scale,
        logit_bias=clip.logit_bias,
        opset=options.opset,
    )
    outputs = [LABEL, SCORES.with_dims(len(options.labels))]
    classifier = EncoderModel(names.classifier, [clip.embedding], outputs[1], batching, extra_outputs=[LABEL])
    runtimes.write_encoder(model_dir, classifier, _classifier_serving(options.serving))
    steps = [
        EnsembleStep.chain(names.image_preprocess, [IMAGE], [PIXEL_VALUES]),
        EnsembleStep.chain(names.image_encoder, [PIXEL_VALUES], [EMBEDDING]),
        EnsembleStep.chain(names.classifier, [EMBEDDING], outputs),
    ]
    parameters = record.parameters() | classifier_parameters(options.labels)
    write_ensemble(
        staging / names.classify,
        [IMAGE],
        outputs,
        steps,
        batching.max_batch_size,
        parameters,
        response_cache=options.serving.cache(),
    )
