"""How the served tokenizer turns texts into token id arrays (tokenizers, numpy, ftfy only).

Shared by the tokenizer model.py (in Triton) and the exporter, which checks it against the
reference library's own tokenization before writing a model.
"""

from __future__ import annotations

import html
import string
from collections.abc import Callable, Mapping

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


def token_arrays(encodings: list[Encoding], dtypes: Mapping[str, type[np.generic]]) -> dict[str, np.ndarray]:
    """One [batch, length] array per tensor name in `dtypes`."""
    return {
        name: np.array([getattr(e, ENCODING_FIELDS[name]) for e in encodings], dtype=dtype)
        for name, dtype in dtypes.items()
    }
