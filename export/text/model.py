"""Read a sentence-transformers model: what it is made of and how it tokenizes.

Loading goes through `SentenceTransformer` itself (hub id or local folder, modules.json), so
the modules we export are the ones sentence-transformers runs. We accept the modules whose
computation we can reproduce in ONNX and refuse the rest by name, rather than serving
something subtly different.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer

from export.errors import ModelNotFoundError, UserError, first_line
from export.steps.writers import TokenizerSettings
from triton_embeddings.names import ATTENTION_MASK, INPUT_IDS, TOKEN_TYPE_IDS, TensorSpec

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

SUPPORTED_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")
# Above this, `max_seq_length` is a "no limit" sentinel of the tokenizer, not a model limit.
_NO_LIMIT = 1_000_000


class UnsupportedModelError(UserError):
    """The model holds something we cannot export faithfully."""


@dataclass(frozen=True)
class TextModel:
    """A loaded sentence-transformers model and the facts the served pipeline needs."""

    model: SentenceTransformer
    inputs: tuple[TensorSpec, ...]
    dimension: int
    tokenizer: TokenizerSettings

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Token tensors for `texts`, as the served tokenizer emits them."""
        return self.tokenizer.tokenize(texts, self.inputs)


def _import_sentence_transformers():
    try:
        import sentence_transformers
    except ImportError as error:
        raise ImportError("exporting needs torch and sentence-transformers: pip install -e '.[export]'") from error
    return sentence_transformers


def load_text_model(
    model_id: str,
    *,
    max_length: int | None = None,
    prompt_name: str | None = None,
    trust_remote_code: bool = False,
) -> TextModel:
    """Load `model_id` (hub id or folder) on the CPU and check we can serve it as is."""
    st = _import_sentence_transformers()
    model = _load(st, model_id, trust_remote_code)
    model.eval()
    check_modules(model)
    transformer = model[0]
    tokenizer = transformer.tokenizer
    if tokenizer is None or not tokenizer.is_fast:
        raise UnsupportedModelError(f"{model_id}: the Transformer module has no fast (Rust) tokenizer")

    inputs = [INPUT_IDS, ATTENTION_MASK]
    if TOKEN_TYPE_IDS.name in tokenizer.model_input_names:
        inputs.append(TOKEN_TYPE_IDS)
    if max_length:
        model.max_seq_length = max_length  # so that the reference we check against truncates alike
    length = model.max_seq_length
    if not length or length > _NO_LIMIT:
        raise UnsupportedModelError(f"{model_id}: the model sets no maximum sequence length; pass --max-length")

    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    settings = TokenizerSettings(
        tokenizer_json=neutral_tokenizer_json(tokenizer.backend_tokenizer),
        max_length=int(length),
        padding_side=tokenizer.padding_side,
        pad_token_id=pad_token_id,
        pad_token=tokenizer.pad_token or tokenizer.convert_ids_to_tokens(pad_token_id),
        prefix=_prompt(model, prompt_name),
    )
    return TextModel(model, tuple(inputs), model.get_embedding_dimension(), settings)


def _load(st, model_id: str, trust_remote_code: bool) -> SentenceTransformer:
    """SentenceTransformer(model_id), with what the user got wrong said in one line: a folder
    that is not there or holds no model, a hub id the hub does not have, a hub that cannot be
    reached (OSError), an id that is not one or code the model needs run (ValueError)."""
    folder = _local_folder(model_id)
    try:
        return st.SentenceTransformer(model_id, device="cpu", trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        source = "from its folder" if folder else "from the Hugging Face hub"
        raise ModelNotFoundError(f"{model_id}: cannot load it {source}: {first_line(error)}") from error


def _local_folder(model_id: str) -> Path | None:
    """The folder `model_id` names, or None for a hub id (`org/name`); a path to nothing is
    refused here, rather than looked up on the hub."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFoundError(f"{model_id}: is a file, not a sentence-transformers folder")
    if model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1 or "\\" in model_id:
        raise ModelNotFoundError(f"{model_id}: no such folder (a hub id is ORG/NAME)")
    return None


def neutral_tokenizer_json(backend: Tokenizer) -> str:
    """The Rust tokenizer without the padding and truncation it happens to carry.

    A loaded Hugging Face tokenizer keeps whatever its last call or its tokenizer_config set
    (all-MiniLM-L6-v2's comes with fixed padding to 128): whoever loads the file later should
    start from nothing. The served model.py sets both itself.
    """
    clean = Tokenizer.from_str(backend.to_str())
    clean.no_padding()
    clean.no_truncation()
    return clean.to_str()


def _supported_modules() -> dict[type, str]:
    """sentence-transformers' own module classes whose computation we reproduce, by kind."""
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    return {Transformer: "Transformer", Pooling: "Pooling", Dense: "Dense", Normalize: "Normalize"}


def check_modules(model: SentenceTransformer) -> None:
    """Known by class, not by name: a model's own code may call a class Pooling and compute
    something else. The very class, not a subclass, which may override what it computes."""
    supported = _supported_modules()
    for kind in map(type, model):
        if kind not in supported:
            raise UnsupportedModelError(
                f"module {kind.__name__} ({kind.__module__}.{kind.__qualname__}) is not supported "
                f"(supported: sentence-transformers' own {', '.join(SUPPORTED_MODULES)})"
            )
    kinds = [supported[type(module)] for module in model]
    if kinds[:1] != ["Transformer"] or kinds.count("Transformer") != 1 or "Pooling" not in kinds:
        raise UnsupportedModelError(f"expected one Transformer followed by Pooling, got modules {kinds}")
    transformer, pooling = model[0], model[kinds.index("Pooling")]
    if "text" not in transformer.modality_config or transformer.module_output_name != "token_embeddings":
        raise UnsupportedModelError("only text Transformer modules that output token embeddings are supported")
    if not pooling.include_prompt:
        raise UnsupportedModelError("Pooling with include_prompt=False (prompt tokens excluded) is not supported")


def _prompt(model: SentenceTransformer, prompt_name: str | None) -> str:
    """The text prepended to every input: the named prompt, else the model's default prompt."""
    name = prompt_name or model.default_prompt_name
    if name is None:
        return ""
    if name not in model.prompts:
        raise UnsupportedModelError(f"prompt {name!r} not found; the model has {sorted(model.prompts)}")
    return model.prompts[name]
