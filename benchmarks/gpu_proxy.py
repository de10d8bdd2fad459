"""The GPU-proxy rows of the side-by-side benchmark: a tiny encoder, so the serving path dominates.

On a GPU the encoder takes about a millisecond per batch; on this CPU all-MiniLM-L6-v2 takes
4-100 ms and hides everything around it. A 2-layer, 32-wide random BERT behind the same
tokenizer (all-MiniLM-L6-v2's files, so the same texts give the same token ids) costs about
as little as a GPU encoder would: what is left to measure is the tokenizer step, the ensemble,
the hops and the protocol, which a GPU would expose just the same (docs/performance.md,
"GPU proxy").

The folder is all-MiniLM-L6-v2's sentence-transformers folder with the transformer's config
and weights replaced (modules.json, pooling and Normalize kept, classic module paths), so
every system loads it as it loads the real model: our exporter, the gateway's tokenizer and
infinity-emb's sentence-transformers 3.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from export.text.default_model import default_model_path

TINY_PIPELINE = "tiny-bert-proxy"
# Two layers, two heads, 32 wide, MiniLM's vocabulary and positions: a few microseconds a row.
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def tiny_model_folder(folder: Path) -> Path:
    """A sentence-transformers folder: MiniLM's tokenizer and modules, a random tiny BERT."""
    import torch
    from transformers import BertConfig, BertModel

    source = default_model_path()
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("model.safetensors", "pytorch_model.bin", "*.onnx"))
    original = json.loads((source / "config.json").read_text())
    config = BertConfig(
        vocab_size=original["vocab_size"],
        max_position_embeddings=original["max_position_embeddings"],
        type_vocab_size=original["type_vocab_size"],
        pad_token_id=original.get("pad_token_id", 0),
        **TINY_BERT,
    )
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(folder)
    pooling = folder / "1_Pooling" / "config.json"
    settings = json.loads(pooling.read_text())
    pooling.write_text(json.dumps(settings | {"word_embedding_dimension": TINY_BERT["hidden_size"]}, indent=2))
    return folder
