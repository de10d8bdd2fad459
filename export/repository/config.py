"""Triton `config.pbtxt` files, built as ModelConfig protobuf messages.

Every config the exporter writes comes from a function here, so field names and enum values
are checked by protobuf rather than by eye, and tests can parse any config back with
`read_config`. Nothing here imports torch: the serving side stays light.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.errors import InvalidArgumentError
from triton_embeddings.names import TensorSpec

CONFIG_FILE = "config.pbtxt"


@dataclass(frozen=True)
class Batching:
    """How one model batches, how many copies of it run, and how much it lets wait.

    `max_queue_delay_us` is how long the dynamic batcher may hold a request to merge it with
    others; 0 still merges whatever queued up while the model was busy. `max_queue_size`
    and `queue_timeout_us` bound the queue: past them, requests are rejected at once with
    a clear error instead of waiting without end (0: no bound).
    """

    max_batch_size: int
    max_queue_delay_us: int = 0
    instances: int = 1
    max_queue_size: int = 0
    queue_timeout_us: int = 0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise InvalidArgumentError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.instances < 1:
            raise InvalidArgumentError(f"instances must be at least 1, got {self.instances}")
        if min(self.max_queue_delay_us, self.max_queue_size, self.queue_timeout_us) < 0:
            raise InvalidArgumentError("queue delay, queue size and queue timeout must be >= 0")

    def unbounded(self) -> Batching:
        """The same batching without a queue policy: for steps whose queue is bounded by what
        the steps ahead of them admit."""
        return replace(self, max_queue_size=0, queue_timeout_us=0)


@dataclass(frozen=True)
class EnsembleStep:
    """One step of an ensemble: `input_map`/`output_map` go from the model's tensor names to
    the ensemble's tensor names."""

    model: str
    input_map: Mapping[str, str]
    output_map: Mapping[str, str]

    @classmethod
    def chain(cls, model: str, inputs: Iterable[TensorSpec], outputs: Iterable[TensorSpec]) -> EnsembleStep:
        """A step whose tensors keep their names in the ensemble: what one step emits, the next
        takes by the same name, so the specs alone wire the steps together."""
        return cls(model, {spec.name: spec.name for spec in inputs}, {spec.name: spec.name for spec in outputs})


def model_input(spec: TensorSpec, *, ragged: bool = False, optional: bool = False) -> mc.ModelInput:
    """`optional`: requests may leave it out (the model sees no tensor of that name)."""
    return mc.ModelInput(
        name=spec.name,
        data_type=mc.DataType.Value(spec.config_type),
        dims=list(spec.dims),
        allow_ragged_batch=ragged,
        optional=optional,
    )


def model_output(spec: TensorSpec) -> mc.ModelOutput:
    return mc.ModelOutput(name=spec.name, data_type=mc.DataType.Value(spec.config_type), dims=list(spec.dims))


def _batched_model(
    name: str,
    inputs: Iterable[mc.ModelInput],
    outputs: Iterable[TensorSpec],
    batching: Batching,
    kind: mc.ModelInstanceGroup.Kind.ValueType,
) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, max_batch_size=batching.max_batch_size)
    config.input.extend(inputs)
    config.output.extend(model_output(spec) for spec in outputs)
    config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
    if batching.max_queue_size or batching.queue_timeout_us:
        policy = config.dynamic_batching.default_queue_policy
        policy.timeout_action = mc.ModelQueuePolicy.REJECT
        policy.default_timeout_microseconds = batching.queue_timeout_us
        policy.allow_timeout_override = True  # a client may ask for a shorter wait, never longer
        policy.max_queue_size = batching.max_queue_size
    config.instance_group.add(count=batching.instances, kind=kind)
    return config


def python_model(
    name: str,
    inputs: Iterable[mc.ModelInput],
    outputs: Iterable[TensorSpec],
    batching: Batching,
    parameters: Mapping[str, str],
) -> mc.ModelConfig:
    """A Python-backend model on the CPU; `parameters` reach its `initialize` as strings."""
    config = _batched_model(name, inputs, outputs, batching, mc.ModelInstanceGroup.KIND_CPU)
    config.backend = "python"
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


def gpu_model(
    name: str,
    inputs: Iterable[mc.ModelInput],
    outputs: Iterable[TensorSpec],
    batching: Batching,
    *,
    platform: str,
    model_filename: str,
) -> mc.ModelConfig:
    """A model on one of Triton's native GPU platforms of the NGC image (onnxruntime_onnx,
    tensorrt_plan)."""
    config = _batched_model(name, inputs, outputs, batching, mc.ModelInstanceGroup.KIND_GPU)
    config.platform = platform
    config.default_model_filename = model_filename
    return config


def ensemble(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    max_batch_size: int,
    steps: Sequence[EnsembleStep],
    parameters: Mapping[str, str] | None = None,
    *,
    response_cache: bool = False,
    optional: Collection[str] = (),
) -> mc.ModelConfig:
    """`response_cache`: a request whose inputs match an earlier one's, byte for byte, gets
    the stored response without running the steps (needs a cache on the server: serve's
    --cache-mb). `optional`: the inputs requests may leave out."""
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch_size)
    config.response_cache.enable = response_cache
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    config.input.extend(model_input(spec, optional=spec.name in optional) for spec in inputs)
    config.output.extend(model_output(spec) for spec in outputs)
    for step in steps:
        config.ensemble_scheduling.step.add(
            model_name=step.model,
            model_version=-1,
            input_map=dict(step.input_map),
            output_map=dict(step.output_map),
        )
    return config


def ensemble_steps(config: mc.ModelConfig) -> list[EnsembleStep]:
    """The steps of an ensemble's config, to build another ensemble on the same steps; a model
    clients call directly (a one-step pipeline) is itself the one step."""
    if config.platform != "ensemble":
        inputs, outputs = ({tensor.name: tensor.name for tensor in group} for group in (config.input, config.output))
        return [EnsembleStep(config.name, inputs, outputs)]
    return [
        EnsembleStep(step.model_name, dict(step.input_map), dict(step.output_map))
        for step in config.ensemble_scheduling.step
    ]


def write_config(config: mc.ModelConfig, model_dir: Path) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / CONFIG_FILE
    path.write_text(text_format.MessageToString(config), encoding="utf-8")
    return path


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a config.pbtxt (a model folder or the file itself) into a ModelConfig."""
    if path.is_dir():
        path = path / CONFIG_FILE
    return text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())
