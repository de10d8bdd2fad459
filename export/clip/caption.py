"""CoCa captions: two more ONNX graphs, the decoding loop's settings, and their checks.

- the caption image encoder: pixels -> IMAGE_TOKENS, what CoCa's text decoder attends to
  (open_clip's `CoCa._encode_image`, its second output);
- the decoding step: IMAGE_TOKENS, int32 ids [batch, length] -> the next token's logits at
  the last position, dynamic in batch and length. It runs open_clip's own modules (the text
  tower's embedding, positional embedding, causal mask and transformer, then `text_decoder`)
  and computes what `CoCa(image, ids, image_embs=...)["logits"][:, -1]` computes, as
  `CoCa.generate` calls it each token. Two things are rewritten so that the length stays
  dynamic in the TorchScript exporter (open_clip's `_embeds` counts its CLS token into a
  Python int, and PyTorch's packed in-projection exports static shapes): the CLS token is
  left out (it comes last, and the causal mask hides it from every text position), and the
  in-projection of self-attention is one linear then a split. The export check below holds
  the graph to open_clip's own forward, token for token.

No cache of past keys and values: open_clip's attention blocks take none, so each token
recomputes the prefix (at most the text context, 76 tokens).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from export.clip.model import ClipModel
from export.clip.trace import _exportable, sample_images
from export.errors import InvalidArgumentError
from export.steps.caption_decoder.decoding import METHODS, DecodingSettings, Step, decode
from export.steps.image_preprocess.image_processing import preprocess
from export.validation import DEFAULT_OPSET, Agreement, ExportValidationError, require_agreement
from triton_embeddings.names import CLIP_INPUT_IDS, IMAGE_TOKENS, NEXT_TOKEN_LOGITS, PIXEL_VALUES, TensorSpec

DEFAULT_CAPTION_PROMPT = "a photo of {},"
# What the exporter traces and checks with beside the sample images.
_SAMPLE_LABEL = "dog"


@dataclass(frozen=True)
class CaptionOptions:
    """How captions are decoded: `decoding` greedy or beam (`beams` hypotheses per image), at
    most `max_new_tokens` after the prompt; `prompt`: where a label's caption starts."""

    decoding: str = "greedy"
    beams: int = 3
    max_new_tokens: int = 30
    prompt: str = DEFAULT_CAPTION_PROMPT

    def __post_init__(self) -> None:
        if self.decoding not in METHODS:
            raise InvalidArgumentError(f"--caption-decoding must be one of {', '.join(METHODS)}, got {self.decoding!r}")
        if self.beams < 1 or self.max_new_tokens < 1:
            raise InvalidArgumentError("--caption-beams and --caption-length must be at least 1")
        if self.prompt.count("{}") != 1:
            raise InvalidArgumentError(f"caption prompt {self.prompt!r} must hold exactly one {{}} for the label")


def is_coca(model: torch.nn.Module) -> bool:
    """A model whose text decoder can caption: open_clip's CoCa (a CLS-token text tower)."""
    text = getattr(model, "text", None)
    return hasattr(model, "text_decoder") and getattr(text, "cls_emb", None) is not None


def require_coca(arch: str, model: torch.nn.Module) -> None:
    if hasattr(model, "text_decoder") and not is_coca(model):
        raise InvalidArgumentError(
            f"{arch}: captions are supported for CoCa models with open_clip's own text tower, "
            f"not {type(getattr(model, 'text', None)).__name__}"
        )
    if not is_coca(model):
        raise InvalidArgumentError(
            f"{arch} is not a CoCa model: captions (--caption-*) need a coca_* architecture, "
            "one with a text decoder (open_clip.list_models())"
        )


def initialize_random_decoder(model: torch.nn.Module) -> None:
    """open_clip builds CoCa's `text_decoder.text_projection` with `torch.empty` and never
    initializes it (its `init_parameters` is not called): random weights would hold whatever
    memory held, often 1e38 or NaN. Initialized as that method would (normal, width^-0.5)."""
    projection = model.text_decoder.text_projection
    with torch.no_grad():
        projection.normal_(std=projection.shape[0] ** -0.5)


class _ImageTokens(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)  # as trace._Tower: the exporter restores this mode onto the model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model._encode_image(pixels)[1]


class _DecodingStep(torch.nn.Module):
    """(image tokens, ids) -> logits of the next token, as `CoCa.forward` computes them."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)

    def forward(self, image_tokens: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        text = self.model.text
        ids = input_ids.long()
        length = ids.shape[1]
        x = text.token_embedding(ids) + text.positional_embedding[:length]
        # open_clip's key mask: pad ids are masked; in its legacy CLS layout (the released
        # CoCa weights), the mask is shifted one position right, as it builds it.
        valid = ids != text.pad_id
        if not text.correct_cls_mask:
            valid = torch.cat([torch.ones_like(valid[:, :1]), valid[:, :-1]], dim=1)
        keys = torch.zeros(valid.shape, dtype=x.dtype).masked_fill(~valid, float("-inf"))
        mask = text.attn_mask[:length, :length].unsqueeze(0) + keys.unsqueeze(1)
        mask = mask.unsqueeze(1).expand(-1, text.heads, -1, -1).reshape(-1, length, length)
        tokens = text.transformer(x, attn_mask=mask)
        return self.model.text_decoder(image_tokens, tokens)[:, -1]


@contextmanager
def _traceable():
    """`trace._exportable`, and self-attention's packed in-projection as one linear and a
    split: PyTorch's version (`unflatten`) exports the sequence length as a constant."""
    functional = torch.nn.functional
    packed = functional._in_projection_packed

    def split_projection(q, k, v, w, b=None):
        if q is k and k is v:
            return tuple(part.contiguous() for part in functional.linear(q, w, b).chunk(3, dim=-1))
        return packed(q, k, v, w, b)

    functional._in_projection_packed = split_projection
    try:
        with _exportable():
            yield
    finally:
        functional._in_projection_packed = packed


def image_tokens_spec(clip: ClipModel) -> TensorSpec:
    height, width = clip.preprocess.size
    with torch.no_grad():
        tokens = clip.model._encode_image(torch.zeros(1, 3, height, width))[1]
    return IMAGE_TOKENS.with_dims(*tokens.shape[1:])


def logits_spec(clip: ClipModel) -> TensorSpec:
    return NEXT_TOKEN_LOGITS.with_dims(int(clip.model.text_decoder.text_projection.shape[1]))


def context_length(clip: ClipModel) -> int:
    """The longest ids the decoding step takes: the text tower's positions, CLS excluded."""
    return min(int(clip.model.text.positional_embedding.shape[0]), int(clip.model.text_decoder.context_length)) - 1


def export_caption_onnx(clip: ClipModel, image_path: Path, step_path: Path, *, opset: int = DEFAULT_OPSET) -> None:
    """Trace the caption image encoder and the decoding step on two-item batches."""
    height, width = clip.preprocess.size
    pixels = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    tokens_spec = image_tokens_spec(clip)
    ids_spec, logits = CLIP_INPUT_IDS, logits_spec(clip)
    with _traceable():
        image_tokens = clip.model._encode_image(pixels)[1]
        start = int(clip.reference_tokenizer.sot_token_id)
        ids = torch.tensor([[start, 320, 1125, 539], [start, 0, 539, 320]], dtype=torch.int32)
        for module, args, inputs, output, path in (
            (_ImageTokens(clip.model), (pixels,), [PIXEL_VALUES], tokens_spec, image_path),
            (_DecodingStep(clip.model), (image_tokens, ids), [tokens_spec, ids_spec], logits, step_path),
        ):
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=[spec.name for spec in inputs],
                output_names=[output.name],
                dynamic_axes={spec.name: spec.dynamic_axes() for spec in (*inputs, output)},
                opset_version=opset,
                dynamo=False,
            )


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    """open_clip's tokenization of `prompt`, without its start, end and padding."""
    ids = tokenizer([prompt])[0].tolist()
    return ids[1 : ids.index(tokenizer.eot_token_id)]


def _token_bytes(tokenizer, vocab_size: int) -> tuple[str, ...]:
    """Each id's bytes as open_clip's `decode` turns it into text (hex): BPE byte symbols back
    to bytes, the end-of-word `</w>` a space; special tokens empty (they are left out)."""
    specials = set(tokenizer.all_special_ids)
    table = []
    for token_id in range(vocab_size):
        token = tokenizer.decoder.get(token_id, "")
        if token_id in specials or not token:
            table.append("")
            continue
        word_end = token.endswith("</w>")
        data = bytes(tokenizer.byte_decoder[c] for c in token.removesuffix("</w>")) + (b" " if word_end else b"")
        table.append(data.hex())
    return tuple(table)


def decoding_settings(clip: ClipModel, options: CaptionOptions, labels: Sequence[str]) -> DecodingSettings:
    tokenizer = clip.reference_tokenizer
    prompts = {label: _prompt_ids(tokenizer, options.prompt.format(label)) for label in labels}
    settings = DecodingSettings(
        start_token=int(tokenizer.sot_token_id),
        end_token=int(tokenizer.eot_token_id),
        pad_token=int(clip.model.pad_id),
        token_bytes=_token_bytes(tokenizer, logits_spec(clip).dims[0]),
        method=options.decoding,
        beams=options.beams,
        max_new_tokens=options.max_new_tokens,
        prompt_template=options.prompt,
        prompts=prompts,
    )
    longest = max([len(settings.prefix(label)) for label in labels] or [1]) + options.max_new_tokens
    if longest > context_length(clip):
        raise InvalidArgumentError(
            f"prompt and --caption-length {options.max_new_tokens} make {longest} tokens; "
            f"the text decoder takes at most {context_length(clip)}"
        )
    return settings


def torch_step(model: torch.nn.Module, image_tokens: torch.Tensor) -> Step:
    """The reference: the call `CoCa.generate` makes each token, on open_clip's own forward."""

    def step(rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
        tokens = image_tokens[torch.from_numpy(np.asarray(rows))]
        latent = torch.zeros(len(tokens), 1)  # forward skips the image tower when both are given
        with torch.no_grad():
            out = model(None, torch.from_numpy(ids).long(), image_latent=latent, image_embs=tokens, output_labels=False)
        return out["logits"][:, -1].numpy()

    return step


def onnx_step(session, image_tokens: np.ndarray) -> Step:
    """The served decoding step, in onnxruntime."""

    def step(rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
        feeds = {IMAGE_TOKENS.name: image_tokens[rows], CLIP_INPUT_IDS.name: ids}
        return session.run([NEXT_TOKEN_LOGITS.name], feeds)[0]

    return step


def check_caption_onnx(clip: ClipModel, image_path: Path, step_path: Path, settings: DecodingSettings) -> Agreement:
    """On the sample images, served preprocessing + both graphs + the served decoding loop
    against open_clip in torch: image tokens within tolerance, then identical ids, greedy and
    with the exported method, one image unprompted and one from a label's prompt."""
    import onnxruntime as ort

    images = sample_images()
    pixels = np.stack([preprocess(image, clip.preprocess) for image in images])
    reference_pixels = torch.stack([clip.reference_preprocess(Image.open(io.BytesIO(image))) for image in images])
    with torch.no_grad():
        expected = clip.model._encode_image(reference_pixels)[1]
    providers = ["CPUExecutionProvider"]
    image_session = ort.InferenceSession(str(image_path), providers=providers)
    step_session = ort.InferenceSession(str(step_path), providers=providers)
    (tokens,) = image_session.run([IMAGE_TOKENS.name], {PIXEL_VALUES.name: pixels})
    agreement = require_agreement(
        "caption image tokens: served preprocessing + ONNX vs open_clip", tokens, expected.numpy()
    )

    prompt = _prompt_ids(clip.reference_tokenizer, settings.prompt_template.format(_SAMPLE_LABEL))
    served_step, reference_step = onnx_step(step_session, tokens), torch_step(clip.model, expected)
    for method in dict.fromkeys(("greedy", settings.method)):
        checked = replace(settings, method=method, prompts={_SAMPLE_LABEL: prompt})
        prefixes = [checked.prefix(), checked.prefix(_SAMPLE_LABEL)]
        served, reference = decode(prefixes, served_step, checked), decode(prefixes, reference_step, checked)
        if served != reference:
            raise ExportValidationError(f"{method} captions: served ids {served} differ from open_clip's {reference}")
    return agreement
