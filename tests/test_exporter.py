"""The exporter's own promises: prompts and max length honoured, refusals that say why."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules.dropout import Dropout

from export.errors import InvalidArgumentError, UserError
from export.repository.config import read_config
from export.repository.layout import check_pipeline_name
from export.steps.writers import TokenizerSettings
from export.text import model as text_model
from export.text.model import UnsupportedModelError, load_text_model
from export.text.pipeline import TextExportOptions, export_text
from export.text.trace import check_text_onnx, export_text_onnx
from export.tools.corpus import corpus
from export.validation import ExportValidationError
from tests.conftest import PROMPTED
from tests.helpers import embed_many
from tests.test_parity import assert_parity


def test_prompt_and_max_length_are_applied_by_the_served_tokenizer(grpc_client, tiny_models) -> None:
    reference = SentenceTransformer(str(tiny_models["tiny-decoder"].path), device="cpu")
    reference.max_seq_length = 16
    texts = corpus(60)
    expected = reference.encode(texts, prompt_name="query")
    assert_parity(embed_many(grpc_client, PROMPTED, texts), expected, texts)
    # And the prompt matters: without it the embeddings differ.
    assert not torch.allclose(torch.from_numpy(expected), torch.from_numpy(reference.encode(texts)), atol=1e-3)


def test_unsupported_module_is_refused_by_name(tmp_path: Path, tiny_models) -> None:
    model = SentenceTransformer(str(tiny_models["tiny-bert"].path), device="cpu")
    SentenceTransformer(modules=[*model, Dropout(0.1)]).save(str(tmp_path / "with-dropout"))
    with pytest.raises(UnsupportedModelError, match=r"module Dropout \(sentence_transformers\..*\) is not supported"):
        export_text(TextExportOptions(model=str(tmp_path / "with-dropout"), name="x", repository=tmp_path / "repo"))
    assert not (tmp_path / "repo" / "x").exists()


class Pooling(torch.nn.Module):
    """Named like sentence-transformers' Pooling, as a model's own code may name its class,
    but computing something else: the exporter must not take it for the one it reproduces."""

    include_prompt = True

    def forward(self, features: dict) -> dict:
        return features | {"sentence_embedding": features["token_embeddings"].amax(dim=1)}


def test_a_module_is_known_by_its_class_not_its_name(tiny_models) -> None:
    model = SentenceTransformer(str(tiny_models["tiny-bert"].path), device="cpu")
    impostor = SentenceTransformer(modules=[model[0], Pooling()], device="cpu")
    with pytest.raises(
        UnsupportedModelError, match=r"module Pooling \(tests\.test_exporter\.Pooling\) is not supported"
    ):
        text_model.check_modules(impostor)
    text_model.check_modules(model)  # sentence-transformers' own Pooling passes


def test_missing_or_unreadable_folders_are_said_so(tmp_path: Path) -> None:
    not_found = text_model.ModelNotFoundError
    with pytest.raises(not_found, match=re.escape(f"{tmp_path / 'nothing'}: no such folder")) as raised:
        load_text_model(str(tmp_path / "nothing"))
    assert isinstance(raised.value, UserError)
    (tmp_path / "file").write_text("not a model")
    with pytest.raises(not_found, match="is a file, not a sentence-transformers folder"):
        load_text_model(str(tmp_path / "file"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(not_found, match="empty: cannot load it") as raised:
        load_text_model(str(tmp_path / "empty"))
    assert isinstance(raised.value.__cause__, (OSError, ValueError))  # what transformers raised


def test_unknown_prompt_is_refused(tiny_models) -> None:
    with pytest.raises(UnsupportedModelError, match="prompt 'passage' not found"):
        load_text_model(str(tiny_models["tiny-decoder"].path), prompt_name="passage")


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "x" * 200, "sp ace", ".."])
def test_names_that_are_not_plain_folder_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgumentError, match="invalid pipeline name"):
        check_pipeline_name(name)


def test_the_onnx_check_fails_when_the_graph_differs(tmp_path: Path, tiny_models) -> None:
    text_model = load_text_model(str(tiny_models["tiny-xlm-roberta"].path))
    onnx_path = tmp_path / "model.onnx"
    export_text_onnx(text_model, onnx_path)
    assert check_text_onnx(text_model, onnx_path).min_cosine > 0.99999
    with torch.no_grad():  # the torch model drifts away from the exported file
        text_model.model[0].auto_model.embeddings.word_embeddings.weight.mul_(1.5)
    with pytest.raises(ExportValidationError, match="ONNX output vs sentence-transformers differs from the reference"):
        check_text_onnx(text_model, onnx_path)


def test_exporting_a_name_again_replaces_the_pipeline(tmp_path: Path, tiny_models) -> None:
    repository = tmp_path / "repo"
    model = str(tiny_models["tiny-xlm-roberta"].path)
    export_text(TextExportOptions(model=model, name="again", repository=repository, max_length=10))
    export_text(TextExportOptions(model=model, name="again", repository=repository, max_length=20))
    tokenizer = read_config(repository / "again_tokenizer")
    assert tokenizer.parameters["max_length"].string_value == "20"
    assert sorted(p.name for p in repository.iterdir()) == ["again", "again_encoder", "again_tokenizer"]
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # no staging folder left behind


def test_the_stored_tokenizer_carries_no_padding_or_truncation(repository: Path) -> None:
    """all-MiniLM-L6-v2's Hugging Face tokenizer loads with fixed padding to 128: that must not
    reach tokenizer.json, where a gateway or script loading it would pad every text to 128."""
    stored = json.loads((repository / "all-MiniLM-L6-v2_tokenizer" / "1" / "tokenizer.json").read_text("utf-8"))
    assert stored["padding"] is None and stored["truncation"] is None
    settings = TokenizerSettings.from_model(repository / "all-MiniLM-L6-v2_tokenizer")
    assert (settings.max_length, settings.padding_side, settings.pad_to_length) == (256, "right", 0)
    assert len(settings.load().encode("two words").ids) == 4  # [CLS] two words [SEP], unpadded
