"""The caption pipelines of a CoCa export, named by `names.ClipPipelineNames`:

- `<name>_caption`: IMAGE -> CAPTION (`_image_preprocess`, then `_caption_image_encoder`,
  ONNX, then `_caption_decoder`, Python, which calls `_caption_decoding_step`, ONNX, through
  BLS once per token);
- `<name>_classify_caption` (with labels): IMAGE -> LABEL, SCORES (as `<name>_classify`) and
  a CAPTION that starts from the caption prompt naming that label.

The caption graphs stay fp32 whatever `--precision` says: the check holds their tokens to
open_clip's, which a lower precision would not keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from export import runtimes
from export.clip.caption import (
    CaptionOptions,
    check_caption_onnx,
    context_length,
    decoding_settings,
    export_caption_onnx,
    image_tokens_spec,
    initialize_random_decoder,
    is_coca,
    logits_spec,
    require_coca,
)
from export.clip.model import ClipModel
from export.errors import InvalidArgumentError
from export.exporter import write_ensemble
from export.repository.config import Batching, EnsembleStep
from export.repository.layout import version_dir
from export.repository.records import PipelineRecord
from export.runtimes import ONNX_FILE, EncoderModel, ServingOptions
from export.steps.writers import classifier_parameters, write_caption_decoder
from export.validation import Agreement
from triton_embeddings.names import (
    CAPTION,
    CLIP_INPUT_IDS,
    EMBEDDING,
    IMAGE,
    LABEL,
    PIXEL_VALUES,
    PROMPT_LABEL,
    SCORES,
    ClipPipelineNames,
    TensorSpec,
)

# The decoding step's warm-up length: a start token and a short prompt.
_TYPICAL_IDS = 8


@dataclass(frozen=True)
class CaptionExport:
    """What `write_captions` needs beyond the pipeline's own options."""

    options: CaptionOptions
    labels: tuple[str, ...]
    serving: ServingOptions
    opset: int
    cache: bool


def captions_for(
    arch: str, pretrained: str | None, clip: ClipModel, asked: CaptionOptions | None, *, wanted: bool = True
) -> CaptionOptions | None:
    """CoCa models are captioned (with `asked`, else the defaults) unless not `wanted`; other
    models are not, and refuse caption options by name. Random CoCa weights get their decoder
    projection set."""
    if asked is not None and not wanted:
        raise InvalidArgumentError("--no-caption and --caption-* options contradict each other")
    if asked is not None:
        require_coca(arch, clip.model)
    if not wanted or not is_coca(clip.model):
        return None
    if pretrained == "none":
        initialize_random_decoder(clip.model)
    return asked or CaptionOptions()


def check_caption_serving(serving: ServingOptions) -> None:
    if serving.runtime == "tensorrt":
        raise InvalidArgumentError("captions run on --runtime python or onnxruntime, not tensorrt")


def write_captions(
    staging: Path,
    names: ClipPipelineNames,
    clip: ClipModel,
    caption: CaptionExport,
    batching: tuple[Batching, Batching],
    record: PipelineRecord,
) -> Agreement:
    """Trace, check, then write the caption models and ensembles; `batching`: (Python steps,
    encoders). The image preprocess step (and, with labels, the classifier) already exist."""
    check_caption_serving(caption.serving)
    steps_batching, encoder_batching = batching
    image_onnx = version_dir(staging / names.caption_image_encoder) / ONNX_FILE
    step_onnx = version_dir(staging / names.caption_decoding_step) / ONNX_FILE
    settings = decoding_settings(clip, caption.options, caption.labels)  # refuses prompts too long, first
    export_caption_onnx(clip, image_onnx, step_onnx, opset=caption.opset)
    agreement = check_caption_onnx(clip, image_onnx, step_onnx, settings)

    tokens, pixels = image_tokens_spec(clip), clip.image_input
    ids = CLIP_INPUT_IDS.with_dims(-1)
    encoders = (
        EncoderModel(names.caption_image_encoder, [pixels], tokens, encoder_batching),
        # Requests merge only at equal lengths: the step reads the last position, unpadded.
        EncoderModel(
            names.caption_decoding_step,
            [ids, tokens],
            logits_spec(clip),
            encoder_batching.unbounded(),
            sequence=(1, _TYPICAL_IDS, context_length(clip)),
            ragged=False,
        ),
    )
    for encoder in encoders:
        runtimes.write_encoder(staging / encoder.name, encoder, caption.serving)
    decoder = staging / names.caption_decoder
    step = names.caption_decoding_step
    decoder_batching = steps_batching.unbounded()
    write_caption_decoder(
        decoder, names.caption_decoder, settings, tokens, step, encoder_batching.max_batch_size, decoder_batching
    )
    _write_caption_ensembles(staging, names, tokens, caption, steps_batching.max_batch_size, record)
    return agreement


def _write_caption_ensembles(
    staging: Path,
    names: ClipPipelineNames,
    tokens: TensorSpec,
    caption: CaptionExport,
    max_batch_size: int,
    record: PipelineRecord,
) -> None:
    preprocess = EnsembleStep.chain(names.image_preprocess, [IMAGE], [PIXEL_VALUES])
    image_tokens = EnsembleStep.chain(names.caption_image_encoder, [PIXEL_VALUES], [tokens])
    parameters = record.parameters() | {"caption_prompt": caption.options.prompt}
    steps = [preprocess, image_tokens, EnsembleStep.chain(names.caption_decoder, [tokens], [CAPTION])]
    write_ensemble(
        staging / names.caption, [IMAGE], [CAPTION], steps, max_batch_size, parameters, response_cache=caption.cache
    )
    if not caption.labels:
        return
    scores = SCORES.with_dims(len(caption.labels))
    # The decoder passes the label on: see names.PROMPT_LABEL.
    scores_map = {SCORES.name: SCORES.name}
    outputs_map = {LABEL.name: LABEL.name, CAPTION.name: CAPTION.name}
    steps = [
        preprocess,
        EnsembleStep.chain(names.image_encoder, [PIXEL_VALUES], [EMBEDDING]),
        EnsembleStep(names.classifier, {EMBEDDING.name: EMBEDDING.name}, {LABEL.name: PROMPT_LABEL.name} | scores_map),
        image_tokens,
        EnsembleStep(names.caption_decoder, {tokens.name: tokens.name, LABEL.name: PROMPT_LABEL.name}, outputs_map),
    ]
    write_ensemble(
        staging / names.classify_caption,
        [IMAGE],
        [LABEL, scores, CAPTION],
        steps,
        max_batch_size,
        parameters | classifier_parameters(caption.labels),
        response_cache=caption.cache,
    )
