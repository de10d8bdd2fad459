"""How the served tokenizer turns texts into token id arrays (tokenizers, numpy, ftfy only).

Shared by the steps that tokenize (the tokenizer's and text_encoder's model.py, in Triton) and
the exporter, which checks it against the reference library's own tokenization before writing
a model.
"""

from __future__ import annotations

import html
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

# The `tokenizers.Encoding` attribute behind each token tensor name.
ENCODING_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _basic(text: str) -> str:
    """Mojibake and HTML entities fixed, as CLIP's tokenizers clean text."""
    import ftfy  # only CLIP tokenizers clean text; sentence-transformers models do not

    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def _squash_whitespace(text: str) -> str:
    return " ".join(text.split())


CLEANERS: dict[str, Callable[[str], str]] = {
    "none": lambda text: text,
    "whitespace": lambda text: _squash_whitespace(_basic(text)),
    "lower": lambda text: _squash_whitespace(_basic(text)).lower(),
    "canonicalize": lambda text: _squash_whitespace(_basic(text).replace("_", " ").translate(_PUNCTUATION).lower()),
}


def load_tokenizer(
    tokenizer_json: str,
    *,
    max_length: int,
    padding_side: str,
    pad_token_id: int,
    pad_token: str,
    pad_to_length: int = 0,
) -> Tokenizer:
    """Truncate to `max_length` tokens (special tokens included); pad each batch to its longest
    text, or to exactly `pad_to_length` when it is not 0 (CLIP's fixed context)."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(
        direction=padding_side, pad_id=pad_token_id, pad_token=pad_token, length=pad_to_length or None
    )
    return tokenizer


def tokenizer_from_parameters(params: Mapping[str, str], folder: Path) -> Tokenizer:
    """The tokenizer a step's config parameters describe (writers.TokenizerSettings)."""
    return load_tokenizer(
        (folder / params["tokenizer_file"]).read_text(encoding="utf-8"),
        max_length=int(params["max_length"]),
        padding_side=params["padding_side"],
        pad_token_id=int(params["pad_token_id"]),
        pad_token=params["pad_token"],
        pad_to_length=int(params.get("pad_to_length", "0")),
    )


def decode_texts(texts: np.ndarray, input_name: str, max_bytes: int) -> list[str]:
    """Decode a [batch, 1] BYTES tensor; name the first bad element in the error."""
    decoded = []
    for index, raw in enumerate(texts.reshape(-1)):
        if len(raw) > max_bytes:
            raise ValueError(f"{input_name}[{index}] is {len(raw)} bytes, more than the limit of {max_bytes}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            reason = f"{error.reason} at byte {error.start}"
            raise ValueError(f"{input_name}[{index}] is not valid UTF-8: {reason}") from None
        if not text:
            raise ValueError(f"{input_name}[{index}] is an empty string; send at least one character")
        decoded.append(text)
    return decoded


@dataclass(frozen=True)
class TextInput:
    """How a step reads a request's texts: its input's name, the size bound, the prompt prefix
    and the cleaning, from the config's parameters (TokenizerSettings.parameters writes them).
    One place, so the tokenizer step and the encoder that tokenizes refuse and prepare alike."""

    name: str
    max_bytes: int
    prefix: str
    clean: Callable[[str], str]

    @classmethod
    def from_parameters(cls, name: str, params: Mapping[str, str]) -> TextInput:
        return cls(name, int(params["max_text_bytes"]), params["prefix"], CLEANERS[params["clean"]])

    def decode(self, tensor: np.ndarray) -> list[str]:
        """The texts of a [batch, 1] BYTES tensor; ValueError naming the first bad one."""
        return decode_texts(tensor, self.name, self.max_bytes)

    def prepare(self, texts: Sequence[str]) -> list[str]:
        """Prompt prefix first, then cleaning: the order of the reference libraries."""
        return [self.clean(self.prefix + text) for text in texts]


def token_arrays(encodings: list[Encoding], dtypes: Mapping[str, type[np.generic]]) -> dict[str, np.ndarray]:
    """One [batch, length] array per tensor name in `dtypes`."""
    return {
        name: np.array([getattr(e, ENCODING_FIELDS[name]) for e in encodings], dtype=dtype)
        for name, dtype in dtypes.items()
    }
