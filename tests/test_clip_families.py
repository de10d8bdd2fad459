"""One architecture of each open_clip family: exported, served by a real Triton, and matched
against open_clip in torch on the same (random) weights, held-out texts and images.

Families: ViT, ResNet, ConvNeXt, EVA, PE-Core, MobileCLIP (CLIP BPE tokenizer; built-in
configs at full size), SigLIP, SigLIP2 and XLM-RoBERTa CLIP (Hugging Face tokenizers; the
family's config from a `local-dir:` folder with a small text tower and vocabulary, since the
hub cannot be reached), and CoCa (its embedding ensembles). SigLIP families are also
exported with labels: their zero-shot scores are one sigmoid per label with the model's logit
bias, not a softmax. Tolerances as in test_clip.py: text cosine >= 0.9999, image >= 0.999.

The server runs in explicit mode and holds one family at a time (the ten at full size would
need about 8 GB); each family's files are deleted once it is checked.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import tritonclient.grpc as grpcclient

from export.clip.caption import initialize_random_decoder
from export.clip.pipeline import ClipExportOptions, export_clip
from export.serving.server import TritonServer
from export.tools.compare import cosine
from export.tools.corpus import corpus, long_texts
from tests import images
from tests.clip_models import ClipReference, _load, siglip, xlm_roberta_clip
from tests.helpers import embed_many, infer_bytes, triton_on
from tests.test_clip import reference_images, reference_texts
from triton_embeddings.names import CLIP_INPUT_IDS, EMBEDDING, IMAGE, LABEL, SCORES, TEXT, ClipPipelineNames

TEXTS = [*corpus(40), *long_texts()[:2], "Fish &amp; chips &lt;3", "IT'S LOUD", "caf\u00c3\u00a9 _under_scores_"]
IMAGE_CASES = ("portrait 300x400", "landscape 400x300", "4000x30", "mode RGBA", "mode L", "EXIF orientation 6")
LABELS = ("cat", "dog", "a red car", "Zürich at night")
TEMPLATES = ("a photo of {}.",)


def built_in(arch: str) -> Callable[[Path], ClipReference]:
    """A built-in architecture at full size, random weights saved as a checkpoint file."""

    def build(folder: Path) -> ClipReference:
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(20)
        checkpoint = folder / "random.pt"
        model = open_clip.create_model(arch, pretrained=None)
        if hasattr(model, "text_decoder"):  # CoCa: one matrix is torch.empty, whatever memory held
            initialize_random_decoder(model)  # (it made the caption check flaky: garbage logits)
        torch.save(model.state_dict(), checkpoint)
        return _load(arch, str(checkpoint))

    return build


FAMILIES: dict[str, Callable[[Path], ClipReference]] = {
    "vit": built_in("ViT-B-32"),
    "resnet": built_in("RN50"),
    "convnext": built_in("convnext_base"),
    "eva": built_in("EVA02-B-16"),
    "pe-core": built_in("PE-Core-B-16"),
    "mobileclip": built_in("MobileCLIP-S1"),
    "siglip": siglip,
    "siglip2": lambda folder: siglip(folder, "ViT-B-16-SigLIP2"),
    "xlm-roberta": xlm_roberta_clip,
    "coca": built_in("coca_ViT-B-32"),
}
SIGMOID_FAMILIES = ("siglip", "siglip2")


@pytest.fixture(scope="module")
def family_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("families") / "model_repository"


@pytest.fixture(scope="module")
def family_server(family_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    family_repository.mkdir(parents=True, exist_ok=True)
    with triton_on(family_repository, tmp_path_factory.mktemp("logs"), model_control_mode="explicit") as running:
        yield running


@pytest.fixture(scope="module")
def family_client(family_server: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(family_server.options.grpc_url)
    yield client
    client.close()


def expected_scores(reference: ClipReference, image_embeddings: np.ndarray) -> np.ndarray:
    """What open_clip's model computes for zero-shot: logit scale (and bias) over cosines,
    sigmoid per label for SigLIP (a logit bias), softmax over labels otherwise."""
    with torch.no_grad():
        labels = reference.model.encode_text(
            reference.tokenizer([TEMPLATES[0].format(label) for label in LABELS]), normalize=True
        )
        logits = reference.model.logit_scale.exp() * torch.from_numpy(image_embeddings) @ labels.T
        bias = getattr(reference.model, "logit_bias", None)
        return (torch.sigmoid(logits + bias) if bias is not None else logits.softmax(dim=-1)).numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_family_is_served_as_open_clip_computes_it(
    family: str, family_repository: Path, family_client: grpcclient.InferenceServerClient, tmp_path: Path
) -> None:
    reference = FAMILIES[family](tmp_path / family)
    labels = LABELS if family in SIGMOID_FAMILIES else ()
    options = ClipExportOptions(
        reference.arch, family, reference.pretrained, family_repository, labels=labels, templates=TEMPLATES, draft=False
    )
    export = export_clip(options)
    names = ClipPipelineNames(family)
    try:
        for ensemble in export.record.ensembles:
            family_client.load_model(ensemble)
        items = [images.parity_cases()[case] for case in IMAGE_CASES]

        # The served tokenizer step's ids are open_clip's, exactly (Hugging Face ones included).
        (served_ids,) = infer_bytes(family_client, names.text_tokenizer, TEXT.name, TEXTS, [CLIP_INPUT_IDS.name])
        np.testing.assert_array_equal(served_ids, reference.tokenizer(TEXTS).numpy())

        served_texts = embed_many(family_client, names.text, TEXTS)
        text_similarity = cosine(served_texts, reference_texts(reference, TEXTS))
        assert text_similarity.min() >= 0.9999, f"{family}: text cosine {text_similarity.min():.6f}"

        (served_images,) = infer_bytes(family_client, names.image, IMAGE.name, items, [EMBEDDING.name])
        expected_images = reference_images(reference, items)
        image_similarity = cosine(served_images, expected_images)
        assert image_similarity.min() >= 0.999, f"{family}: image cosine {image_similarity.min():.6f}"

        if labels:
            label, scores = infer_bytes(family_client, names.classify, IMAGE.name, items, [LABEL.name, SCORES.name])
            expected = expected_scores(reference, expected_images)
            # Relative: sigmoid scores of random weights are ~1e-5 (scale 10, bias -10).
            np.testing.assert_allclose(scores, expected, rtol=1e-3, atol=1e-7)
            assert not np.allclose(scores.sum(axis=1), 1), "SigLIP's scores are not a softmax"
            assert [value.decode() for value in label[:, 0]] == [LABELS[i] for i in expected.argmax(axis=1)]
    finally:
        for ensemble in export.record.ensembles:
            family_client.unload_model(ensemble, unload_dependents=True)
        for model in export.record.ensembles + export.record.steps:
            shutil.rmtree(family_repository / model, ignore_errors=True)
