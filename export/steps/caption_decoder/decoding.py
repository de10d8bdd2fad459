"""CoCa caption decoding in numpy: greedy or beam search over a next-token function.

Pure numpy, so that the served step (model.py beside this file, calling the decoding-step
model through BLS) and the exporter (calling onnxruntime, or torch, on the same graph) run
the same loop. `step(rows, ids)` returns the next-token logits [n, vocab] for `ids` [n, L]
(int32, all of one length) of the images `rows`; the loop calls it once per distinct length
and token, for every unfinished row of the batch together.

Semantics follow open_clip's `CoCa.generate` where sensible: ids start with the start token
(then the prompt's tokens, if any); the end token is not allowed before the sequence holds
`min_length` ids (prompt included, as open_clip's `min_seq_len`); a row stops at the end
token or at the pad token (open_clip's generate stops there too: CLIP's pad id 0 is also the
token "!"), neither part of the caption's text, or after `max_new_tokens` new tokens
(open_clip instead forces the end token at `seq_len`). Beam search keeps `beams` hypotheses
per image ranked by total log-probability (no length penalty, one beam group); open_clip's
default is Hugging Face's diverse group beam search, which needs transformers < 5.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

Step = Callable[[np.ndarray, np.ndarray], np.ndarray]
METHODS = ("greedy", "beam")


@dataclass(frozen=True)
class DecodingSettings:
    """What the caption decoder needs, written by the exporter as one JSON parameter.

    `token_bytes`: each token id's text as hex-encoded UTF-8 bytes, `</w>` already a space
    and special tokens empty (open_clip's `decode`); `prompts`: per label, the prompt's token
    ids (start token not included)."""

    start_token: int
    end_token: int
    pad_token: int
    token_bytes: tuple[str, ...]
    method: str = "greedy"
    beams: int = 3
    max_new_tokens: int = 30
    min_length: int = 5
    prompt_template: str = ""
    prompts: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown decoding {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.beams < 1 or self.max_new_tokens < 1:
            raise ValueError("beams and max_new_tokens must be at least 1")

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> DecodingSettings:
        values = json.loads(text)
        return cls(**(values | {"token_bytes": tuple(values["token_bytes"])}))

    def ends(self, token: int) -> bool:
        return token in (self.end_token, self.pad_token)

    def prefix(self, label: str | None = None) -> list[int]:
        """The ids decoding starts from: the start token, then the label's prompt if any."""
        if label is None:
            return [self.start_token]
        return [self.start_token, *self.prompts[label]]


def next_logits(step: Step, rows: Sequence[int], sequences: Sequence[list[int]]) -> np.ndarray:
    """Logits [len(sequences), vocab]: one `step` call per distinct length (the decoding step
    takes no padding: its causal attention has no mask for it)."""
    out: np.ndarray | None = None
    lengths = np.array([len(sequence) for sequence in sequences])
    for length in np.unique(lengths):
        which = np.flatnonzero(lengths == length)
        ids = np.array([sequences[i] for i in which], dtype=np.int32)
        logits = step(np.asarray(rows)[which], ids)
        out = np.empty((len(sequences), logits.shape[-1]), np.float32) if out is None else out
        out[which] = logits
    assert out is not None
    return out


def _block_early_end(logits: np.ndarray, sequences: Sequence[list[int]], settings: DecodingSettings) -> np.ndarray:
    short = np.array([len(sequence) < settings.min_length for sequence in sequences])
    if short.any():
        logits = logits.copy()
        logits[short, settings.end_token] = -np.inf
    return logits


def greedy(prefixes: Sequence[list[int]], step: Step, settings: DecodingSettings) -> list[list[int]]:
    """Each row's ids, prefix included, the end token included when reached."""
    sequences = [list(prefix) for prefix in prefixes]
    alive = list(range(len(sequences)))
    for _ in range(settings.max_new_tokens):
        if not alive:
            break
        logits = next_logits(step, alive, [sequences[row] for row in alive])
        logits = _block_early_end(logits, [sequences[row] for row in alive], settings)
        for row, token in zip(alive, logits.argmax(axis=1).tolist(), strict=True):
            sequences[row].append(int(token))
        alive = [row for row in alive if not settings.ends(sequences[row][-1])]
    return sequences


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """In float64, so that ranking candidates does not depend on float32 rounding."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@dataclass
class _Search:
    """One image's beam search: live hypotheses and finished ones, each (ids, log-probability)."""

    live: list[tuple[list[int], float]]
    finished: list[tuple[list[int], float]] = field(default_factory=list)

    def done(self) -> bool:
        """Log-probabilities only fall: once a finished hypothesis beats every live one, it wins."""
        return not self.live or (bool(self.finished) and max(s for _, s in self.finished) >= self.live[0][1])

    def best(self) -> list[int]:
        return max(self.finished + self.live, key=lambda hypothesis: hypothesis[1])[0]


def _advance(search: _Search, scores: np.ndarray, settings: DecodingSettings) -> None:
    """Extend the live hypotheses by their best 2 x beams continuations: those ending go to
    `finished`, the best `beams` others stay live."""
    flat = (np.array([score for _, score in search.live])[:, None] + scores).reshape(-1)
    vocab = scores.shape[1]
    live: list[tuple[list[int], float]] = []
    for index in np.argsort(-flat, kind="stable")[: 2 * settings.beams].tolist():
        parent, token = divmod(index, vocab)
        hypothesis = ([*search.live[parent][0], token], float(flat[index]))
        if settings.ends(token):
            search.finished.append(hypothesis)
        elif len(live) < settings.beams:
            live.append(hypothesis)
    search.live = live


def beam(prefixes: Sequence[list[int]], step: Step, settings: DecodingSettings) -> list[list[int]]:
    """Per image, the most probable ids found with `settings.beams` beams, prefix included."""
    searches = [_Search([(list(prefix), 0.0)]) for prefix in prefixes]
    for _ in range(settings.max_new_tokens):
        active = [image for image, search in enumerate(searches) if not search.done()]
        if not active:
            break
        rows = [image for image in active for _ in searches[image].live]
        sequences = [ids for image in active for ids, _ in searches[image].live]
        scores = log_softmax(_block_early_end(next_logits(step, rows, sequences), sequences, settings))
        start = 0
        for image in active:
            count = len(searches[image].live)
            _advance(searches[image], scores[start : start + count], settings)
            start += count
    return [search.best() for search in searches]


def decode(prefixes: Sequence[list[int]], step: Step, settings: DecodingSettings) -> list[list[int]]:
    """Each image's ids with the method the settings name."""
    return (greedy if settings.method == "greedy" else beam)(prefixes, step, settings)


def detokenize(ids: Sequence[int], settings: DecodingSettings) -> str:
    """Text as open_clip's `decode` gives it, special tokens (and a final pad) left out,
    surrounding spaces stripped."""
    if ids and settings.ends(ids[-1]):
        ids = ids[:-1]
    data = b"".join(bytes.fromhex(settings.token_bytes[token]) for token in ids)
    return data.decode("utf-8", errors="replace").strip()
