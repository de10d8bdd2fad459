"""Read an open_clip model: its two towers, its tokenizer and its image preprocessing.

Loading goes through open_clip itself (`create_model_and_transforms`, `get_tokenizer`), so
architecture names, pretrained tags, checkpoint files and `local-dir:`/`hf-hub:` folders
work as they do there. What the served steps need is read from what open_clip built: the
tokenizer's vocabulary, merges, context length and text cleaning; the preprocess config
(size, resize mode, interpolation, mean, std, fill). Nothing about a model is hard-coded.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.errors import InvalidArgumentError, ModelNotFoundError, UserError, first_line
from export.steps.image_preprocess.image_processing import PreprocessSettings
from export.steps.writers import TokenizerSettings
from triton_embeddings.names import CLIP_INPUT_IDS, EMBEDDING, PIXEL_VALUES, TensorSpec

if TYPE_CHECKING:
    import torch

# open_clip's pre-tokenization pattern, special tokens aside (they are added tokens here).
# open_clip compiles it case-insensitive, which matters for the contractions ("IT'S").
_CLIP_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_CLEAN_KINDS = ("lower", "whitespace", "canonicalize")
_SCHEMAS = ("hf-hub:", "local-dir:")


class UnsupportedClipModelError(UserError):
    """The model holds something we cannot serve faithfully."""


@dataclass(frozen=True)
class ClipModel:
    """A loaded open_clip model, its reference tokenizer and transform, and our settings."""

    model: torch.nn.Module
    reference_tokenizer: Callable[[list[str]], torch.Tensor]
    reference_preprocess: Callable[[Any], torch.Tensor]
    tokenizer: TokenizerSettings
    preprocess: PreprocessSettings
    dimension: int
    logit_scale: float
    logit_bias: float | None  # SigLIP's: its zero-shot scores are sigmoids per label, not a softmax

    @property
    def text_input(self) -> TensorSpec:
        """The text encoder's input: token ids padded to the full context."""
        return CLIP_INPUT_IDS.with_dims(self.tokenizer.pad_to_length)

    @property
    def image_input(self) -> TensorSpec:
        """The image encoder's input: pixels at the preprocess size."""
        return PIXEL_VALUES.with_dims(3, *self.preprocess.size)

    @property
    def embedding(self) -> TensorSpec:
        return EMBEDDING.with_dims(self.dimension)


def _import_open_clip():
    try:
        import open_clip
    except ImportError as error:
        raise ImportError("exporting CLIP models needs open_clip: pip install -e '.[export]'") from error
    return open_clip


def load_clip_model(arch: str, pretrained: str | None, *, draft: bool = True) -> ClipModel:
    """`pretrained`: an open_clip tag, a checkpoint file, or "none" for random weights. Built-in
    architecture names need one said explicitly: random weights by accident would serve noise.
    `hf-hub:` and `local-dir:` names bring their own weights."""
    if pretrained is None and not arch.startswith(_SCHEMAS):
        raise InvalidArgumentError(f"{arch}: pass --pretrained TAG, a checkpoint file, or none for random weights")
    open_clip = _import_open_clip()
    weights = None if pretrained in (None, "none") else pretrained
    _check_findable(open_clip, arch, weights)
    try:
        # Random weights are random in both towers: open_clip would otherwise fetch a Hugging
        # Face text tower's own pretrained weights (multilingual CLIPs) under random images.
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=weights, pretrained_text=weights is not None or arch.startswith(_SCHEMAS)
        )
        tokenizer = open_clip.get_tokenizer(arch)
    except (OSError, RuntimeError, ValueError) as error:  # downloads, files, checkpoints
        given = f"{arch} --pretrained {pretrained}" if weights else arch
        raise ModelNotFoundError(f"{given}: cannot load it: {first_line(error)}") from error
    model.eval()
    return ClipModel(
        model=model,
        reference_tokenizer=tokenizer,
        reference_preprocess=preprocess,
        tokenizer=tokenizer_settings(arch, tokenizer),
        preprocess=_preprocess_settings(open_clip, model, draft),
        dimension=_embedding_size(model, tokenizer),
        logit_scale=float(model.logit_scale.detach().exp()),
        logit_bias=None if getattr(model, "logit_bias", None) is None else float(model.logit_bias.detach()),
    )


def _check_findable(open_clip: Any, arch: str, weights: str | None) -> None:
    """What open_clip would not find, said in one line before anything is built or downloaded
    (open_clip's own error for an unknown architecture lists all 150 it knows)."""
    if arch.startswith("local-dir:"):
        folder = Path(arch.removeprefix("local-dir:"))
        if not folder.is_dir():
            raise ModelNotFoundError(f"{arch}: no such folder")
        if not (folder / "open_clip_config.json").is_file():
            raise ModelNotFoundError(f"{arch}: no open_clip_config.json in it")
    if arch.startswith(_SCHEMAS):
        return
    name = arch.replace("/", "-")  # open_clip reads the legacy ViT-B/32 as ViT-B-32
    if name not in open_clip.list_models():
        close = _close_matches(name, open_clip.list_models())
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ModelNotFoundError(f"{arch}: unknown open_clip architecture{hint} (all: open_clip.list_models())")
    if weights and not open_clip.get_pretrained_cfg(name, weights) and not Path(weights).is_file():
        tags = open_clip.list_pretrained_tags_by_model(name)
        listed = ", ".join(_close_matches(weights, tags) or tags) or "none"
        raise ModelNotFoundError(
            f"{arch}: --pretrained {weights!r} is neither a pretrained tag of it (tags: {listed}) nor a checkpoint file"
        )


def _close_matches(name: str, known: list[str]) -> list[str]:
    """Up to four of `known` close to `name`, ignoring case."""
    by_lower = {option.lower(): option for option in known}
    return [by_lower[match] for match in difflib.get_close_matches(name.lower(), list(by_lower), n=4)]


def _embedding_size(model: Any, tokenizer: Any) -> int:
    import torch

    with torch.no_grad():
        return int(model.encode_text(tokenizer(["a"])).shape[-1])


def tokenizer_settings(arch: str, tokenizer: Any) -> TokenizerSettings:
    """open_clip's tokenizer as a `tokenizers` tokenizer that gives the same ids: its own CLIP
    BPE rebuilt, or a Hugging Face tokenizer's own pipeline (SigLIP, SigLIP2, XLM-RoBERTa)."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    if type(tokenizer) is SimpleTokenizer:
        return _clip_bpe_settings(arch, tokenizer)
    if type(tokenizer) is HFTokenizer:
        return _hugging_face_settings(arch, tokenizer)
    raise UnsupportedClipModelError(
        f"{arch}: tokenizer {type(tokenizer).__name__} is not supported yet "
        "(open_clip's CLIP BPE tokenizer and Hugging Face tokenizers are)"
    )


def _clean_kind(arch: str, tokenizer: Any) -> str:
    """Which of open_clip's text cleanings the tokenizer applies before tokenizing."""
    from open_clip.tokenizer import get_clean_fn

    clean = [kind for kind in _CLEAN_KINDS if tokenizer.clean_fn is get_clean_fn(kind)]
    if not clean:
        raise UnsupportedClipModelError(f"{arch}: unknown text cleaning {tokenizer.clean_fn}")
    return clean[0]


def _clip_bpe_settings(arch: str, tokenizer: Any) -> TokenizerSettings:
    """CLIP's BPE: same vocabulary and merges, same pre-tokenization, start/end tokens,
    truncation that keeps the end token, and padding with 0 to the full context."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors

    if tokenizer.reduction_fn is not None:
        raise UnsupportedClipModelError(f"{arch}: tokenizers with a reduction mask are not supported")
    clean = _clean_kind(arch, tokenizer)
    merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.get)
    rust = Tokenizer(models.BPE(vocab=dict(tokenizer.encoder), merges=merges, end_of_word_suffix="</w>"))
    rust.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    specials = [tokenizer.decoder[token_id] for token_id in tokenizer.all_special_ids]
    rust.add_special_tokens(specials)
    start, end = specials[0], specials[1]
    rust.post_processor = processors.TemplateProcessing(
        single=f"{start} $A {end}",
        special_tokens=[(start, tokenizer.sot_token_id), (end, tokenizer.eot_token_id)],
    )
    return TokenizerSettings(
        tokenizer_json=rust.to_str(),
        max_length=tokenizer.context_length,
        padding_side="right",
        pad_token_id=0,
        pad_token=tokenizer.decoder[0],
        clean=clean,
        pad_to_length=tokenizer.context_length,
    )


def _hugging_face_settings(arch: str, tokenizer: Any) -> TokenizerSettings:
    """A Hugging Face tokenizer is already a `tokenizers` pipeline (normalizer, pre-tokenizer,
    model, special tokens): served as is, with open_clip's cleaning in front and its call's
    settings (truncation to the context, padding to it with the tokenizer's own pad token, on
    the tokenizer's side). What open_clip does after the call is refused by name."""
    if tokenizer.tokenizer_mode:
        raise UnsupportedClipModelError(
            f"{arch}: open_clip's tokenizer_mode {tokenizer.tokenizer_mode!r} (its own special-token layout) "
            "is not supported"
        )
    if tokenizer.strip_sep_token:
        raise UnsupportedClipModelError(f"{arch}: tokenizers that strip the separator token are not supported")
    hugging_face = tokenizer.tokenizer
    backend = getattr(hugging_face, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedClipModelError(
            f"{arch}: {type(hugging_face).__name__} has no fast (Rust) version to serve; "
            "save the model with a tokenizer.json"
        )
    if hugging_face.pad_token_id is None:
        raise UnsupportedClipModelError(f"{arch}: its tokenizer has no pad token, and open_clip pads to the context")
    return TokenizerSettings(
        tokenizer_json=backend.to_str(),
        max_length=tokenizer.context_length,
        padding_side=hugging_face.padding_side,
        pad_token_id=hugging_face.pad_token_id,
        pad_token=str(hugging_face.pad_token),
        clean=_clean_kind(arch, tokenizer),
        pad_to_length=tokenizer.context_length,
    )


def _preprocess_settings(open_clip: Any, model: Any, draft: bool) -> PreprocessSettings:
    from open_clip.transform import PreprocessCfg

    cfg = asdict(PreprocessCfg(**open_clip.get_model_preprocess_cfg(model)))
    size = cfg["size"] if isinstance(cfg["size"], (tuple, list)) else (cfg["size"], cfg["size"])
    try:
        return PreprocessSettings(
            size=(int(size[0]), int(size[1])),
            mean=tuple(float(x) for x in cfg["mean"]),
            std=tuple(float(x) for x in cfg["std"]),
            # "random" is a training-time choice; open_clip resizes with bicubic at inference.
            interpolation="bicubic" if cfg["interpolation"] == "random" else cfg["interpolation"],
            resize_mode=cfg["resize_mode"],
            fill_color=int(cfg["fill_color"]),
            draft=draft,
        )
    except ValueError as error:
        raise UnsupportedClipModelError(f"preprocessing {cfg} is not supported: {error}") from None
