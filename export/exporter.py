"""The skeleton every exporter follows, so text and CLIP exports differ only in their models.

1. `pre_checks`: the name, the runtime's prerequisites and the precision, before any work;
2. the exporter loads its model and builds its `PipelineRecord`;
3. inside `staged_pipeline(repository, record)` it traces its ONNX graphs, then
   `precision_pass` checks them against the reference library, converts them to the asked
   precision and checks them again with that precision's tolerance;
4. it writes its steps and, with `write_ensemble`, the ensembles clients call; the staged
   models move into the repository only when everything succeeded.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from export import runtimes
from export.precision import FP16_AGREEMENT, INT8_AGREEMENT, check_precision
from export.repository import config as model_config
from export.repository.config import Batching, EnsembleStep
from export.repository.layout import check_pipeline_name, version_dir
from export.runtimes import ServingOptions
from export.tools.perf_analyzer import write_pipeline_input
from triton_embeddings.names import TensorSpec

Checked = TypeVar("Checked")


def pre_checks(name: str, serving: ServingOptions, precision: str) -> tuple[Batching, Batching]:
    """Everything that can be refused before loading a model; (Python steps, encoders) batching."""
    check_pipeline_name(name)
    batching = serving.batching()
    runtimes.check_prerequisites(serving.runtime)
    check_precision(precision, runtime=serving.runtime)
    return batching


def precision_pass(
    precision: str,
    onnx_files: Sequence[Path],
    check: Callable[..., Checked],
    calibration: Sequence[Callable[[], Iterable[dict[str, np.ndarray]]]] = (),
) -> Checked:
    """Check the fp32 graphs with `check(**tolerance)`; for fp16 or int8, convert them in place
    and check again with that precision's tolerance. Returns the last check's result.

    int8 takes, per graph, the `calibration` inputs that set its scales."""
    checked = check()
    if precision == "fp16":
        from export.precision.fp16 import convert_to_fp16

        for path in onnx_files:
            convert_to_fp16(path)
        checked = check(**FP16_AGREEMENT)
    elif precision == "int8":
        from export.precision.int8 import quantize_int8

        if len(calibration) != len(onnx_files):
            raise ValueError("int8 takes calibration inputs for each graph")
        for path, feeds in zip(onnx_files, calibration, strict=True):
            quantize_int8(path, feeds())
        checked = check(**INT8_AGREEMENT)
    return checked


def write_ensemble(
    model_dir: Path,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    steps: Sequence[EnsembleStep],
    max_batch_size: int,
    parameters: Mapping[str, str],
    *,
    response_cache: bool,
    optional: Collection[str] = (),
) -> None:
    """An ensemble clients call, with the perf_analyzer input file for its first input."""
    config = model_config.ensemble(
        model_dir.name,
        inputs,
        outputs,
        max_batch_size,
        steps,
        parameters,
        response_cache=response_cache,
        optional=optional,
    )
    version_dir(model_dir)  # Triton wants a version folder, even an empty one, for ensembles
    model_config.write_config(config, model_dir)
    write_pipeline_input(model_dir, inputs[0])
