"""`text` and `clip`: export a model as pipelines. Both take the source MODEL; the pipeline
name defaults to one read from it."""

from __future__ import annotations

import argparse
from pathlib import Path

from export.cli import flags

_HF_HUB, _LOCAL_DIR = "hf-hub:", "local-dir:"


def add_commands(commands: argparse._SubParsersAction) -> None:
    _add_text(commands)
    _add_clip(commands)


def _add_text(commands: argparse._SubParsersAction) -> None:
    text = commands.add_parser(
        "text",
        help="export a sentence-transformers model as a Triton text pipeline",
        description="Writes NAME_tokenizer, NAME_encoder and the ensemble NAME (TEXT -> EMBEDDING).",
    )
    text.add_argument(
        "model", metavar="MODEL", help="Hugging Face hub id (ORG/NAME) or local sentence-transformers folder"
    )
    text.add_argument(
        "--name",
        help="pipeline (ensemble) name clients call (default: the model's, e.g. all-MiniLM-L6-v2 for "
        "sentence-transformers/all-MiniLM-L6-v2 or a folder of that name)",
    )
    text.add_argument("--max-length", type=int, metavar="N", help="truncate to this many tokens (default: the model's)")
    flags.add_serving(text, python_step="tokenizer")
    text.add_argument("--prompt-name", help="prepend this named prompt of the model to every text")
    flags.add_limits(text, images=False)
    flags.add_switch(text, "--trust-remote-code", "allow the model's own Python code")
    flags.add_switch(
        text,
        "--tokenize-in-encoder",
        "python runtime: tokenize inside the encoder's model, one step instead of two (faster per request; "
        "no admission by work, see docs/performance.md)",
    )
    text.set_defaults(run=_run_text, resolve=lambda args: _default_name(args, text_model_name(args.model)))


def _add_clip(commands: argparse._SubParsersAction) -> None:
    from triton_embeddings.names import DEFAULT_TEMPLATE

    clip = commands.add_parser(
        "clip",
        help="export an open_clip model as Triton text, image and zero-shot classification pipelines",
        description="Writes NAME_text (TEXT -> EMBEDDING), NAME_image (IMAGE -> EMBEDDING) and, "
        "with --labels, NAME_classify (IMAGE -> LABEL, SCORES), with their steps.",
    )
    clip.add_argument(
        "model",
        metavar="MODEL",
        help="open_clip architecture (ViT-B-32, RN50, ...; see open_clip.list_models()), "
        "hf-hub:ORG/NAME, or local-dir:FOLDER",
    )
    clip.add_argument(
        "--name",
        help="pipeline name prefix (default: the architecture, or the last part of an hf-hub: id or local-dir: folder)",
    )
    clip.add_argument(
        "--pretrained",
        metavar="TAG|FILE|none",
        help="open_clip pretrained tag (e.g. openai, laion2b_s34b_b79k), a checkpoint file, "
        "or none for random weights; needed for built-in architecture names",
    )
    clip.add_argument(
        "--labels", type=Path, metavar="FILE", help="file of zero-shot labels, one a line: adds NAME_classify"
    )
    clip.add_argument(
        "--template",
        action="append",
        help=f"prompt per label, {{}} for the label; repeat to average prompts (default: {DEFAULT_TEMPLATE!r})",
    )
    flags.add_switch(
        clip,
        "--draft",
        "decode JPEGs at a reduced DCT scale when at least twice the target size; --no-draft: always at full size",
        default=True,
    )
    _add_caption_flags(clip)
    flags.add_serving(clip, python_step="preprocess")
    flags.add_limits(clip, images=True)
    clip.set_defaults(run=_run_clip, resolve=lambda args: _default_name(args, clip_model_name(args.model)))


def _add_caption_flags(clip: argparse.ArgumentParser) -> None:
    """CoCa models are captioned by default; these flags change how (other models refuse them)."""
    group = clip.add_argument_group("CoCa captions (coca_* models: NAME_caption, and NAME_classify_caption)")
    flags.add_switch(
        group,
        "--caption",
        "CoCa models: also write the caption pipelines; --no-caption: embeddings (and classify) only",
        default=True,
    )
    group.add_argument(
        "--caption-decoding", choices=("greedy", "beam"), help="how captions are decoded (default: greedy)"
    )
    group.add_argument("--caption-beams", type=int, metavar="N", help="beams per image with beam decoding (default: 3)")
    group.add_argument(
        "--caption-length",
        type=int,
        metavar="N",
        help="at most N tokens after the prompt, end token included (default: 30)",
    )
    group.add_argument(
        "--caption-prompt",
        metavar="T",
        help="where NAME_classify_caption's caption starts, {} for the label (default: 'a photo of {},')",
    )


def _caption_options(args: argparse.Namespace):
    """CaptionOptions from the flags given; None when none was (CoCa models then get the defaults)."""
    from export.clip.caption import CaptionOptions

    given = {
        "decoding": args.caption_decoding,
        "beams": args.caption_beams,
        "max_new_tokens": args.caption_length,
        "prompt": args.caption_prompt,
    }
    given = {key: value for key, value in given.items() if value is not None}
    return CaptionOptions(**given) if given else None


def text_model_name(model: str) -> str:
    """The last part of a hub id or folder: all-MiniLM-L6-v2 for
    sentence-transformers/all-MiniLM-L6-v2; the folder's own name for `.`."""
    return _folder_name(model)


def clip_model_name(model: str) -> str:
    """ViT-B-32 for ViT-B-32 (and open_clip's legacy ViT-B/32), NAME for hf-hub:ORG/NAME, the
    folder's name for local-dir:FOLDER."""
    if model.startswith(_HF_HUB):
        return model.removeprefix(_HF_HUB).rstrip("/").rsplit("/", 1)[-1]
    if model.startswith(_LOCAL_DIR):
        return _folder_name(model.removeprefix(_LOCAL_DIR))
    return model.replace("/", "-")


def _folder_name(path: str) -> str:
    folder = Path(path).expanduser()
    return (folder.resolve() if folder.is_dir() else folder).name


def _default_name(args: argparse.Namespace, derived: str) -> None:
    """--name, else `derived` if it makes a pipeline name."""
    from export.errors import InvalidArgumentError
    from export.repository.layout import check_pipeline_name

    if args.name is not None:
        return
    try:
        args.name = check_pipeline_name(derived)
    except InvalidArgumentError as error:
        raise InvalidArgumentError(f"cannot name the pipeline after {args.model}: {error}; pass --name NAME") from None


def _run_text(args: argparse.Namespace) -> int:
    from export.text.pipeline import TextExportOptions, export_text

    options = TextExportOptions(
        model=args.model,
        name=args.name,
        repository=args.repository,
        serving=flags.serving_options(args, args.tokenizer_instances),
        max_length=args.max_length,
        opset=args.opset,
        precision=args.precision,
        prompt_name=args.prompt_name,
        trust_remote_code=args.trust_remote_code,
        tokenize_in_encoder=args.tokenize_in_encoder,
        **flags.limits(args),
    )
    result = export_text(options)
    print(
        f"wrote {', '.join(result.record.models)} to {result.repository}: "
        f"{result.record.embedding_size}-d embeddings, up to {result.max_length} tokens; "
        f"served tokenizer + ONNX vs sentence-transformers: {result.agreement}"
    )
    return 0


def _run_clip(args: argparse.Namespace) -> int:
    from export.clip.pipeline import ClipExportOptions, export_clip, read_labels
    from triton_embeddings.names import DEFAULT_TEMPLATE

    options = ClipExportOptions(
        arch=args.model,
        name=args.name,
        pretrained=args.pretrained,
        repository=args.repository,
        serving=flags.serving_options(args, args.preprocess_instances),
        labels=read_labels(args.labels) if args.labels else (),
        templates=tuple(args.template or (DEFAULT_TEMPLATE,)),
        opset=args.opset,
        precision=args.precision,
        draft=args.draft,
        caption=_caption_options(args),
        captions=args.caption,
        **flags.limits(args),
    )
    result = export_clip(options)
    print(
        f"wrote {', '.join(result.record.models)} to {result.repository}: "
        f"{result.record.embedding_size}-d embeddings; vs open_clip: text {result.text}, image {result.image}"
    )
    return 0
