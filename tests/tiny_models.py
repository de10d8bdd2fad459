"""Tiny random-weight sentence-transformers models, built offline in seconds.

Each stands for an architecture family the exporter must handle: BERT (token_type_ids, CLS
pooling), XLM-RoBERTa (no token_type_ids, pad id 1 that position ids depend on, mean pooling
and Normalize), and a decoder (Qwen2: left padding, last-token pooling, every other pooling
mode concatenated, a Dense layer). Tokenizers are trained with `tokenizers` on the test corpus.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules.dense import Dense
from sentence_transformers.base.modules.normalize import Normalize
from sentence_transformers.base.modules.transformer import Transformer
from sentence_transformers.sentence_transformer.modules.pooling import Pooling
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2Model,
    XLMRobertaConfig,
    XLMRobertaModel,
)

from export.tools.corpus import corpus

HIDDEN = 32
MAX_LENGTH = 48
# Two layers, two heads, 32 wide: every part of the architecture, built in milliseconds.
SMALL = {"hidden_size": HIDDEN, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
QUERY_PROMPT = "Instruct: find a similar text\nQuery: "


@dataclass(frozen=True)
class TinyModel:
    name: str
    path: Path
    uses_token_type_ids: bool


def _wordpiece(texts: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=400, special_tokens=special))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def _unigram(texts: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # pad id 1, as in XLM-R
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=special, unk_token="<unk>")
    tokenizer.train_from_iterator(texts, trainer)
    bos, eos = tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    tokenizer.decoder = decoders.Metaspace()
    return tokenizer


def _byte_bpe(texts: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def _save(
    folder: Path, model: torch.nn.Module, fast: PreTrainedTokenizerFast, modules_after, prompts: dict | None = None
) -> Path:
    backbone = folder / "backbone"
    model.save_pretrained(backbone)
    fast.save_pretrained(backbone)
    transformer = Transformer(str(backbone), max_seq_length=MAX_LENGTH)
    modules = [transformer, *modules_after(transformer.get_embedding_dimension())]
    st = SentenceTransformer(modules=modules, prompts=prompts)
    out = folder / "st"
    st.save(str(out))
    return out


def tiny_bert(folder: Path) -> TinyModel:
    """BERT with token_type_ids, CLS pooling, no Normalize (embeddings keep their scale)."""
    torch.manual_seed(0)
    tokenizer = _wordpiece(corpus())
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        **SMALL,
        max_position_embeddings=64,
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    path = _save(folder, BertModel(config).eval(), fast, lambda dim: [Pooling(dim, pooling_mode="cls")])
    return TinyModel("tiny-bert", path, uses_token_type_ids=True)


def tiny_xlm_roberta(folder: Path) -> TinyModel:
    """XLM-RoBERTa: no token_type_ids; pad id 1 drives its position ids; mean pooling, Normalize."""
    torch.manual_seed(1)
    tokenizer = _unigram(corpus())
    config = XLMRobertaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        **SMALL,
        max_position_embeddings=MAX_LENGTH + 2,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_input_names=["input_ids", "attention_mask"],
    )
    path = _save(
        folder, XLMRobertaModel(config).eval(), fast, lambda dim: [Pooling(dim, pooling_mode="mean"), Normalize()]
    )
    return TinyModel("tiny-xlm-roberta", path, uses_token_type_ids=False)


def tiny_decoder(folder: Path) -> TinyModel:
    """A Qwen2 decoder, left padding, every pooling mode concatenated (last-token among them),
    then Dense(tanh) and Normalize: the shape of LLM-based embedders, instruction prompt included."""
    torch.manual_seed(2)
    tokenizer = _byte_bpe(corpus())
    config = Qwen2Config(
        vocab_size=tokenizer.get_vocab_size(),
        **SMALL,
        num_key_value_heads=1,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
    )

    def head(dim: int) -> list:
        modes = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
        pooling = Pooling(dim, pooling_mode=modes)
        dense = Dense(pooling.get_embedding_dimension(), 24, activation_function=torch.nn.Tanh())
        return [pooling, dense, Normalize()]

    path = _save(folder, Qwen2Model(config).eval(), fast, head, prompts={"query": QUERY_PROMPT})
    return TinyModel("tiny-decoder", path, uses_token_type_ids=False)


TINY_MODELS = (tiny_bert, tiny_xlm_roberta, tiny_decoder)
