"""The caption decoder step of CoCa pipelines, written into its model folder (no torch here).

Beside writers.py rather than in it: one step kind, one writer module of its own.
"""

from __future__ import annotations

from pathlib import Path

from export.repository import config as model_config
from export.repository.config import Batching
from export.repository.layout import version_dir
from export.steps.caption_decoder.decoding import DecodingSettings
from export.steps.writers import add_python_model
from triton_embeddings.names import CAPTION, CLIP_INPUT_IDS, LABEL, NEXT_TOKEN_LOGITS, TensorSpec

DECODING_FILE = "decoding.json"


def write_caption_decoder(
    model_dir: Path,
    name: str,
    settings: DecodingSettings,
    image_tokens: TensorSpec,
    decoding_step: str,
    decoding_step_max_batch_size: int,
    batching: Batching,
) -> None:
    """IMAGE_TOKENS (and an optional LABEL to start from its prompt) -> CAPTION, and LABEL
    passed on (see names.PROMPT_LABEL), calling the `decoding_step` model through BLS for
    every token."""
    add_python_model(model_dir, "caption_decoder")
    (version_dir(model_dir) / DECODING_FILE).write_text(settings.to_json(), encoding="utf-8")
    parameters = {
        "settings_file": DECODING_FILE,
        "decoding_step": decoding_step,
        "decoding_step_max_batch_size": str(decoding_step_max_batch_size),
        "image_tokens": image_tokens.name,
        "label": LABEL.name,
        "input_ids": CLIP_INPUT_IDS.name,
        "logits": NEXT_TOKEN_LOGITS.name,
    }
    inputs = [model_config.model_input(image_tokens), model_config.model_input(LABEL, optional=True)]
    config = model_config.python_model(name, inputs, [CAPTION, LABEL], batching, parameters)
    model_config.write_config(config, model_dir)
