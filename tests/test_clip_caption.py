"""CoCa captions through a real tritonserver, against open_clip's own CoCa modules in torch.

The reference is a plain torch loop making the call open_clip's `CoCa.generate` makes each
token (`model(image, ids, image_latent=..., image_embs=..., output_labels=False)`), with the
documented semantics (start token, no end before 5 ids, stop at end or pad, 30 new tokens at
most): open_clip's `generate` itself needs transformers < 5, which the venv does not have.
The model is a small CoCa (coca_ViT-B-32's config, two narrow layers per tower) with random
weights: captions are random tokens, parity is what is tested.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from export.clip.caption import CaptionOptions, check_caption_onnx, decoding_settings, export_caption_onnx
from export.clip.model import load_clip_model
from export.clip.pipeline import ClipExportOptions, export_clip
from export.errors import InvalidArgumentError
from export.serving.server import TritonServer
from export.steps.caption_decoder.decoding import DecodingSettings, greedy
from export.tools.compare import cosine
from export.validation import ExportValidationError
from tests import images
from tests.helpers import infer_bytes, post_infer, triton_on
from triton_embeddings import AsyncEmbeddingClient, EmbeddingClient, EmbeddingError
from triton_embeddings.names import (
    CAPTION,
    CLIP_INPUT_IDS,
    EMBEDDING,
    IMAGE,
    IMAGE_TOKENS,
    LABEL,
    NEXT_TOKEN_LOGITS,
    PIXEL_VALUES,
    SCORES,
    ClipPipelineNames,
)

GREEDY, BEAM = "coca", "coca-beam"
LABELS = ("cat", "dog", "a red car", "Zürich at night")
PROMPT = "a photo of {},"
BEAMS, BEAM_LENGTH = 3, 12
SOT, EOT, PAD, MIN_LENGTH = 49406, 49407, 0, 5


def tiny_coca(folder: Path) -> Path:
    """A `local-dir:` CoCa: coca_ViT-B-32's config made small, random weights saved (the text
    decoder's projection initialized: open_clip leaves it as torch.empty memory)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = open_clip.get_model_config("coca_ViT-B-32")
    small = {"width": 64, "heads": 2, "layers": 2}
    config["embed_dim"] = 64
    config["vision_cfg"] |= {"layers": 2, "width": 64, "attn_pooler_heads": 2}
    config["text_cfg"] |= small
    config["multimodal_cfg"] |= small | {"attn_pooler_heads": 2}
    preprocess = open_clip.get_model_preprocess_cfg(open_clip.create_model("coca_ViT-B-32", pretrained=None))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": preprocess}))
    torch.manual_seed(21)
    model = open_clip.create_model(f"local-dir:{folder}")
    torch.nn.init.normal_(model.text_decoder.text_projection, std=64**-0.5)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def coca(tmp_path_factory: pytest.TempPathFactory):
    """(arch, open_clip model, its transform)."""
    folder = tiny_coca(tmp_path_factory.mktemp("coca"))
    arch = f"local-dir:{folder}"
    model, _, transform = open_clip.create_model_and_transforms(arch)
    return arch, model.eval(), transform


@pytest.fixture(scope="module")
def caption_server(coca, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repository = tmp_path_factory.mktemp("coca-serving") / "model_repository"
    arch = coca[0]
    export_clip(ClipExportOptions(arch, GREEDY, None, repository, labels=LABELS))
    beam = CaptionOptions(decoding="beam", beams=BEAMS, max_new_tokens=BEAM_LENGTH)
    export_clip(ClipExportOptions(arch, BEAM, None, repository, caption=beam))
    with triton_on(repository, tmp_path_factory.mktemp("coca-logs")) as running:
        yield running


@pytest.fixture(scope="module")
def client(caption_server: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(caption_server.options.grpc_url)
    yield client
    client.close()


def sample_cases() -> list[bytes]:
    return list(images.parity_cases().values())[:4]


def image_embs(coca, items: list[bytes]) -> torch.Tensor:
    _, model, transform = coca
    pixels = torch.stack([transform(Image.open(io.BytesIO(item))) for item in items])
    with torch.no_grad():
        return model._encode_image(pixels)[1]


def next_log_probs(model, embs: torch.Tensor, ids: list[list[int]]) -> torch.Tensor:
    """What `CoCa.generate` computes each token: the logits at the last position."""
    latent = torch.zeros(len(ids), 1)
    with torch.no_grad():
        out = model(None, torch.tensor(ids), image_latent=latent, image_embs=embs, output_labels=False)
    logits = out["logits"][:, -1].double()
    if len(ids[0]) < MIN_LENGTH:
        logits[:, EOT] = -torch.inf
    return logits.log_softmax(dim=-1)


def torch_greedy(model, embs: torch.Tensor, prefix: list[int], max_new: int = 30) -> list[int]:
    ids = list(prefix)
    for _ in range(max_new):
        ids.append(int(next_log_probs(model, embs[None], [ids]).argmax()))
        if ids[-1] in (EOT, PAD):
            break
    return ids


def torch_beam(model, embs: torch.Tensor, beams: int, max_new: int) -> list[int]:
    """Beam search by total log-probability: the best 2 x beams continuations each token,
    those ending set aside, the best `beams` others kept; done when a finished one beats all."""
    live, finished = [([SOT], 0.0)], []
    for _ in range(max_new):
        if finished and max(score for _, score in finished) >= live[0][1]:
            break
        scores = next_log_probs(model, embs[None].expand(len(live), -1, -1), [ids for ids, _ in live])
        total = torch.tensor([score for _, score in live], dtype=torch.float64)[:, None] + scores
        values, indices = total.reshape(-1).sort(descending=True, stable=True)
        kept = []
        for value, index in zip(values[: 2 * beams].tolist(), indices[: 2 * beams].tolist(), strict=True):
            parent, token = divmod(index, scores.shape[1])
            hypothesis = ([*live[parent][0], token], value)
            if token in (EOT, PAD):
                finished.append(hypothesis)
            elif len(kept) < beams:
                kept.append(hypothesis)
        live = kept
        if not live:
            break
    return max(finished + live, key=lambda hypothesis: hypothesis[1])[0]


def open_clip_text(ids: list[int]) -> str:
    """open_clip's decode, as its README turns generate's ids into a caption."""
    ids = ids[:-1] if ids[-1] in (EOT, PAD) else ids
    text = open_clip.decode(torch.tensor(ids))
    return text.split("<end_of_text>")[0].replace("<start_of_text>", "").strip()


def prompt_ids(label: str) -> list[int]:
    ids = open_clip.get_tokenizer("coca_ViT-B-32")([PROMPT.format(label)])[0].tolist()
    return ids[1 : ids.index(EOT)]


def served_captions(client, model: str, items: list[bytes]) -> list[str]:
    (captions,) = infer_bytes(client, model, IMAGE.name, items, [CAPTION.name])
    assert captions.shape == (len(items), 1)
    return [value.decode() for value in captions[:, 0]]


def test_greedy_ids_through_the_served_models_equal_torch(client, coca) -> None:
    """The served preprocess, caption image encoder and decoding step, driven by the served
    loop's own helper from here: ids identical to the torch loop."""
    names, items = ClipPipelineNames(GREEDY), sample_cases()
    (pixels,) = infer_bytes(client, names.image_preprocess, IMAGE.name, items, [PIXEL_VALUES.name])
    tokens = client.infer(names.caption_image_encoder, [_input(PIXEL_VALUES.name, pixels)]).as_numpy(IMAGE_TOKENS.name)

    def step(rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
        inputs = [_input(CLIP_INPUT_IDS.name, ids), _input(IMAGE_TOKENS.name, tokens[rows])]
        return client.infer(names.caption_decoding_step, inputs).as_numpy(NEXT_TOKEN_LOGITS.name)

    settings = DecodingSettings(start_token=SOT, end_token=EOT, pad_token=PAD, token_bytes=())
    served = greedy([[SOT]] * len(items), step, settings)
    embs = image_embs(coca, items)
    assert served == [torch_greedy(coca[1], embs[i], [SOT]) for i in range(len(items))]


def _input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), "INT32" if array.dtype == np.int32 else "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def test_greedy_captions_equal_open_clip_decode_of_the_torch_ids(client, coca) -> None:
    items = sample_cases()
    embs = image_embs(coca, items)
    expected = [open_clip_text(torch_greedy(coca[1], embs[i], [SOT])) for i in range(len(items))]
    assert served_captions(client, ClipPipelineNames(GREEDY).caption, items) == expected
    assert any(expected)  # random weights, random words; not all empty


def test_beam_captions_equal_a_torch_beam_search(client, coca) -> None:
    items = sample_cases()
    embs = image_embs(coca, items)
    expected = [torch_beam(coca[1], embs[i], BEAMS, BEAM_LENGTH) for i in range(len(items))]
    assert served_captions(client, ClipPipelineNames(BEAM).caption, items) == [open_clip_text(e) for e in expected]


def test_classify_caption_returns_the_classifier_outputs_and_a_caption_from_the_label(client, coca) -> None:
    names, items = ClipPipelineNames(GREEDY), sample_cases()
    label, scores = infer_bytes(client, names.classify, IMAGE.name, items, [LABEL.name, SCORES.name])
    outputs = [LABEL.name, SCORES.name, CAPTION.name]
    both_label, both_scores, captions = infer_bytes(client, names.classify_caption, IMAGE.name, items, outputs)
    np.testing.assert_array_equal(both_label, label)
    np.testing.assert_array_equal(both_scores, scores)
    embs = image_embs(coca, items)
    for i, (name, caption) in enumerate(zip(label[:, 0], captions[:, 0], strict=True)):
        name, caption = name.decode(), caption.decode()
        prompt = open_clip_text([SOT, *prompt_ids(name)])
        assert caption.startswith(prompt), (name, caption)
        assert caption == open_clip_text(torch_greedy(coca[1], embs[i], [SOT, *prompt_ids(name)]))


def test_classify_caption_answers_any_subset_of_its_outputs(client) -> None:
    """Triton 2.51 deadlocked such requests while LABEL was both an output and the decoder's input."""
    names, items = ClipPipelineNames(GREEDY), sample_cases()[:2]
    everything = infer_bytes(client, names.classify_caption, IMAGE.name, items, [LABEL.name, SCORES.name, CAPTION.name])
    for index, output in enumerate((LABEL.name, SCORES.name, CAPTION.name)):
        (alone,) = infer_bytes(client, names.classify_caption, IMAGE.name, items, [output])
        np.testing.assert_array_equal(alone, everything[index])


def test_coca_embeddings_still_match_open_clip(client, coca) -> None:
    _, model, transform = coca
    items = sample_cases()
    (served,) = infer_bytes(client, ClipPipelineNames(GREEDY).image, IMAGE.name, items, [EMBEDDING.name])
    with torch.no_grad():
        pixels = torch.stack([transform(Image.open(io.BytesIO(item))) for item in items])
        expected = model.encode_image(pixels, normalize=True).numpy()
    assert cosine(served, expected).min() >= 0.999


@pytest.mark.parametrize(("case", "message"), [(b"hello world", "is not an image file"), (b"", "is empty")])
def test_bad_image_fails_its_request_only(caption_server, client, case: bytes, message: str) -> None:
    names, good = ClipPipelineNames(GREEDY), images.jpeg(96, 64)
    for model in (names.caption, names.classify_caption):
        body = {"inputs": [{"name": IMAGE.name, "datatype": "BYTES", "shape": [2, 1], "data": ["", ""]}]}
        body["inputs"][0]["data"] = [_base64(good), _base64(case)]
        status, reply = post_infer(caption_server, model, json.dumps(body).encode())
        assert status == 400 and "IMAGE[1] " in reply["error"] and message in reply["error"], reply

    def one(item: bytes):
        try:
            return served_captions(client, names.caption, [item])
        except InferenceServerException as error:
            return error

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, [good] * 6 + [case]))
    assert all(isinstance(result, list) for result in results[:6])
    assert results[0] == results[5]
    assert isinstance(results[6], InferenceServerException) and results[6].status() == "StatusCode.INVALID_ARGUMENT"


def _base64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def test_an_unknown_label_is_refused_by_the_decoder(client) -> None:
    names = ClipPipelineNames(GREEDY)
    tokens = np.zeros((1, *client.get_model_metadata(names.caption_decoder).inputs[0].shape[1:]), np.float32)
    label = grpcclient.InferInput(LABEL.name, [1, 1], "BYTES")
    label.set_data_from_numpy(np.array([[b"horse"]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="'horse' is not one of the exported labels"):
        client.infer(names.caption_decoder, [_input(IMAGE_TOKENS.name, tokens), label])


def test_caption_options_on_a_model_without_decoder_are_refused_by_name(tmp_path: Path) -> None:
    options = ClipExportOptions("ViT-B-32", "x", "none", tmp_path, caption=CaptionOptions(decoding="beam"))
    with pytest.raises(InvalidArgumentError, match="ViT-B-32 is not a CoCa model"):
        export_clip(options)
    command = [sys.executable, "-m", "export", "clip", "ViT-B-32", "--pretrained", "none", "--caption-length", "9"]
    done = subprocess.run([*command, "--repository", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "ViT-B-32 is not a CoCa model" in done.stderr and "Traceback" not in done.stderr


def test_the_export_check_refuses_a_decoding_step_that_drifted(coca, tmp_path: Path) -> None:
    clip = load_clip_model(coca[0], None)
    image_path, step_path = tmp_path / "image.onnx", tmp_path / "step.onnx"
    export_caption_onnx(clip, image_path, step_path)
    settings = decoding_settings(clip, CaptionOptions(), LABELS)
    assert check_caption_onnx(clip, image_path, step_path, settings).min_cosine > 0.99999
    with torch.no_grad():
        clip.model.text_decoder.text_projection.neg_()  # the most likely token becomes the least
    with pytest.raises(ExportValidationError, match=r"greedy captions: served ids .* differ from open_clip's"):
        check_caption_onnx(clip, image_path, step_path, settings)


def test_coca_without_captions_and_contradicting_flags(coca, tmp_path: Path) -> None:
    export = export_clip(ClipExportOptions(coca[0], "plain", None, tmp_path, captions=False))
    assert export.record.models == ClipPipelineNames("plain").models(classify=False)
    with pytest.raises(InvalidArgumentError, match="--no-caption and --caption-\\* options contradict"):
        export_clip(ClipExportOptions(coca[0], "x", None, tmp_path, caption=CaptionOptions(), captions=False))
    too_long = CaptionOptions(max_new_tokens=80)
    with pytest.raises(InvalidArgumentError, match="make 81 tokens; the text decoder takes at most 75"):
        export_clip(ClipExportOptions(coca[0], "x", None, tmp_path, caption=too_long))
    assert not (tmp_path / "x_caption").exists()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_client_captions(caption_server, client, protocol: str) -> None:
    names, items = ClipPipelineNames(GREEDY), sample_cases()
    expected = served_captions(client, names.caption, items)
    url = caption_server.options.grpc_url if protocol == "grpc" else caption_server.options.http_url
    with EmbeddingClient(url, protocol) as embeddings:
        assert embeddings.caption(names.caption, items) == expected
        assert embeddings.caption(names.classify_caption, items[:1])[0].startswith("a photo of ")
        with pytest.raises(EmbeddingError, match="not a caption pipeline"):
            embeddings.caption(names.image, items)

    async def captions() -> list[str]:
        async with AsyncEmbeddingClient(url, protocol) as embeddings:
            return await embeddings.caption(names.caption, items)

    assert asyncio.run(captions()) == expected
