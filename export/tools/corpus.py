"""A varied, deterministic text corpus for parity tests and quality benchmarks.

Short and long (past any max_length), several scripts (Latin with accents, Cyrillic, Greek,
Arabic, Devanagari, CJK), emoji, punctuation-only, repeated words, odd whitespace, code and
numbers. Generated from fixed parts with a fixed seed: no downloads, same texts every run.
"""

from __future__ import annotations

import random

HANDWRITTEN = [
    "a",
    "I",
    "ok",
    "Hello, world!",
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "The new movie is awesome and I would watch it again.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "How do I reset my password if I no longer have access to my email?",
    "Café au lait, crème brûlée, naïve façade, jalapeño, Zürich, Ærøskøbing.",
    "Die Würde des Menschen ist unantastbar.",
    "¿Dónde está la biblioteca? ¡Muchas gracias!",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο.",
    "مرحبا بالعالم، كيف حالك اليوم؟",
    "यह एक परीक्षण वाक्य है।",
    "我喜欢在周末去公园散步。",
    "東京は日本の首都であり、世界最大の都市圏の一つです。",
    "안녕하세요, 만나서 반갑습니다.",
    "機械学習モデルの推論サーバー",
    "🙂",
    "🚀🚀🚀 launch day 🎉",
    "I love pizza 🍕 and sushi 🍣!",
    "👨‍👩‍👧‍👦 family emoji with zero-width joiners",
    "!!!",
    "...",
    "?!",
    "—",
    "()[]{}<>",
    "#$%&*@^~",
    ".,;:'\"",
    "the the the the the the the the",
    "buffalo buffalo buffalo buffalo buffalo buffalo buffalo buffalo",
    "no no no no no no no no no no no no no no no no no no no no",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\ninside",
    " ",
    "UPPER CASE SHOUTING TEXT",
    "MiXeD CaSe TeXt",
    "def embed(texts: list[str]) -> np.ndarray: return model.encode(texts)",
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    "https://example.com/path?query=1&other=two#fragment",
    "user@example.org",
    "3.14159 2.71828 1.41421 1.61803",
    "The year 2024 had 366 days; 2025 has 365.",
    "+1 (555) 010-9999",
    "e = mc²; ∑ᵢ xᵢ² ≥ 0; ∀x ∈ ℝ",
    "\u00a0non-breaking\u00a0spaces\u00a0",
    "zero\u200bwidth\u200bspace",
    "combining accents: e\u0301 a\u0300 o\u0308",
]

_SUBJECTS = ["The cat", "A scientist", "My neighbour", "The committee", "Our server", "A tiny robot", "Das Kind"]
_VERBS = ["reads", "builds", "ignores", "celebrates", "measures", "describes", "repairs", "sings about"]
_OBJECTS = ["a long report", "the embedding model", "every request", "the old bridge", "ラーメン", "数据库", "🍰"]
_TAILS = ["", " quickly.", " in the rain.", " before lunch!", " — or so they say.", "?", " (again)."]
_LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut "
    "labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco. "
)


def long_texts() -> list[str]:
    """Texts well past 256 tokens, so truncation is always exercised."""
    return [
        _LOREM * 12,
        "word " * 700,
        "日本語の長い文章。" * 150,
        ("Embeddings map text to vectors. " * 40) + "The end.",
        "🙂 " * 400,
    ]


def corpus(size: int = 240, seed: int = 1234) -> list[str]:
    """`size` texts: the handwritten ones, long ones, then generated sentences of varied length."""
    rng = random.Random(seed)
    texts = HANDWRITTEN + long_texts()
    while len(texts) < size:
        clauses = [
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_TAILS)}"
            for _ in range(rng.choice([1, 1, 2, 3, 8, 20]))
        ]
        texts.append(" ".join(clauses))
    return texts[:size]
