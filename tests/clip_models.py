"""CLIP models for the tests, with random weights saved to disk (no CLIP weights exist offline).

The exporter and the torch reference load the same weights from the same file, through
open_clip's own loaders: ViT-B-32 from a checkpoint file (`--pretrained PATH`), and a tiny
custom architecture from a `local-dir:` folder whose config sets a non-default preprocessing
(non-square input, letterboxing resize with a fill colour, bilinear, its own mean and std) and
a case-keeping text cleaning, so that nothing read from a config can hide behind a default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

TINY_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": [64, 96], "layers": 2, "width": 64, "patch_size": 16},
        "text_cfg": {
            "context_length": 32,
            "vocab_size": 49408,
            "width": 64,
            "heads": 2,
            "layers": 2,
            "tokenizer_kwargs": {"clean": "whitespace"},
        },
    },
    "preprocess_cfg": {
        "mean": [0.5, 0.45, 0.4],
        "std": [0.25, 0.3, 0.35],
        "interpolation": "bilinear",
        "resize_mode": "longest",
        "fill_color": 127,
    },
}


@dataclass(frozen=True)
class ClipReference:
    """What to export (`arch`, `pretrained`) and open_clip's own model, transform, tokenizer."""

    arch: str
    pretrained: str | None
    model: torch.nn.Module
    preprocess: object
    tokenizer: object


def _load(arch: str, pretrained: str | None) -> ClipReference:
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
    return ClipReference(arch, pretrained, model.eval(), preprocess, open_clip.get_tokenizer(arch))


def vit_b_32(folder: Path) -> ClipReference:
    torch.manual_seed(10)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "vit-b-32-random.pt"
    torch.save(model.state_dict(), checkpoint)
    return _load("ViT-B-32", str(checkpoint))


def tiny_custom(folder: Path) -> ClipReference:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_CONFIG))
    torch.manual_seed(11)
    model = open_clip.create_model(f"local-dir:{folder}")
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return _load(f"local-dir:{folder}", None)


# --- open_clip families whose text side comes from Hugging Face (SigLIP, SigLIP2, XLM-R) -----
# The hub cannot be reached here, so each gets a `local-dir:` folder holding what a hub repo
# holds: open_clip_config.json (the family's own config, towers made small where a config can
# say so), random weights, and tokenizer files built by transformers' own tokenizer classes
# over a vocabulary trained here on the test corpus. The pipelines (normalizer, pre-tokenizer,
# special tokens, padding) are therefore the real ones; only the vocabulary is small.


def _tokenizer_corpus() -> list[str]:
    from export.tools.corpus import corpus

    return corpus(300)


def _unigram_pieces(size: int) -> list[tuple[str, float]]:
    """A SentencePiece-style (Unigram, Metaspace) vocabulary trained on the corpus."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.train_from_iterator(_tokenizer_corpus(), trainers.UnigramTrainer(vocab_size=size, show_progress=False))
    return [(piece, score) for piece, score in json.loads(tokenizer.to_str())["model"]["vocab"]]


def _bpe_pieces(size: int, first_id: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A Gemma-style (byte-fallback BPE over "▁"-joined text) vocabulary and merges."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.Replace(" ", "\u2581")
    tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tokenizer.train_from_iterator(_tokenizer_corpus(), trainers.BpeTrainer(vocab_size=size, show_progress=False))
    model = json.loads(tokenizer.to_str())["model"]
    pieces = sorted(model["vocab"], key=model["vocab"].get)
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in model["merges"]]
    return {piece: first_id + index for index, piece in enumerate(pieces)}, merges


def siglip_tokenizer(folder: Path) -> int:
    """SigLIP's (c4-en) tokenizer as open_clip made it: T5's pipeline, no extra ids, the end
    token doubling as padding. Returns the vocabulary size."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *_unigram_pieces(800)]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    tokenizer.pad_token = "</s>"
    tokenizer.save_pretrained(folder)
    return len(tokenizer)


def siglip2_tokenizer(folder: Path) -> int:
    """SigLIP2's (Gemma) tokenizer as open_clip made it: byte fallback, no start token, an end
    token, padding with <pad> on the right."""
    from transformers import GemmaTokenizer

    specials = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    byte_tokens = {f"<0x{byte:02X}>": len(specials) + byte for byte in range(256)}
    pieces, merges = _bpe_pieces(1000, len(specials) + len(byte_tokens))
    vocab = specials | byte_tokens | {piece: i for piece, i in pieces.items() if piece not in byte_tokens}
    tokenizer = GemmaTokenizer(
        vocab=vocab, merges=merges, add_bos_token=False, add_eos_token=True, padding_side="right"
    )
    tokenizer.save_pretrained(folder)
    return max(vocab.values()) + 1


def xlm_roberta_tokenizer(folder: Path) -> int:
    """XLM-RoBERTa's tokenizer: <s> text </s>, <pad> = 1."""
    from transformers import XLMRobertaTokenizer

    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *_unigram_pieces(800), ("<mask>", 0.0)]
    tokenizer = XLMRobertaTokenizer(vocab=vocab)
    tokenizer.save_pretrained(folder)
    return len(tokenizer)


def _small_text(text_cfg: dict, vocab_size: int) -> dict:
    """The family's own text tower, two layers narrow, over the test vocabulary."""
    return text_cfg | {"vocab_size": vocab_size, "width": 256, "heads": 4, "layers": 2}


def _local_family(folder: Path, image_arch: str, model_cfg: dict, seed: int) -> ClipReference:
    """A `local-dir:` folder: `model_cfg`, `image_arch`'s preprocessing, random weights."""
    preprocess_cfg = open_clip.get_model_preprocess_cfg(open_clip.create_model(image_arch, pretrained=None))
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}", pretrained_text=False)  # no weights file yet
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return _load(f"local-dir:{folder}", None)


def siglip(folder: Path, arch: str = "ViT-B-16-SigLIP") -> ClipReference:
    """A SigLIP (or, with a SigLIP2 `arch`, SigLIP2) model: the family's image tower as is,
    its text tower small, its tokenizer over a small vocabulary."""
    folder.mkdir(parents=True, exist_ok=True)
    build = siglip2_tokenizer if "SigLIP2" in arch else siglip_tokenizer
    model_cfg = open_clip.get_model_config(arch)
    model_cfg["text_cfg"] = _small_text(model_cfg["text_cfg"], build(folder))
    return _local_family(folder, arch, model_cfg, seed=12)


def xlm_roberta_clip(folder: Path, arch: str = "xlm-roberta-base-ViT-B-32") -> ClipReference:
    """A multilingual CLIP: a Hugging Face XLM-RoBERTa text tower (two layers, from a local
    config folder, as open_clip builds it from the hub's) with mean pooling."""
    from transformers import XLMRobertaConfig

    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = xlm_roberta_tokenizer(folder)
    text_model = folder / "text-model"
    XLMRobertaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=80,
    ).save_pretrained(text_model)
    model_cfg = open_clip.get_model_config(arch)
    model_cfg["text_cfg"] = model_cfg["text_cfg"] | {"hf_model_name": str(text_model), "hf_model_pretrained": False}
    return _local_family(folder, "ViT-B-32", model_cfg, seed=13)  # the same image tower
