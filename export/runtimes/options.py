"""How a pipeline is served: batching, queue bounds and instances, per runtime and as asked for.

The defaults per runtime were measured on the 2-core CPU for `python`, and are starting points
for one GPU for the GPU runtimes (docs/text-embeddings.md, docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from export.errors import InvalidArgumentError
from export.repository.config import Batching
from export.steps.admission import AdmissionSettings


@dataclass(frozen=True)
class ServingDefaults:
    """Batching defaults per runtime: measured on the 2-core CPU for `python`; starting
    points for one GPU for the GPU runtimes (see docs/text-embeddings.md)."""

    max_batch_size: int
    max_queue_delay_us: int
    encoder_instances: int
    tokenizer_instances: int
    # Queue policy, used without admission (GPU runtimes, --max-wait-ms 0; see batching()): a
    # step lets 4 batches of one-item requests wait and rejects more at once. The timeout is
    # only a backstop for requests that carry many items (the size bound counts requests): one
    # full batch of long texts takes seconds on a CPU, and a request waiting 30 s has usually
    # been given up by its client (common client and proxy timeouts: 30-60 s).
    queue_batches: int = 4  # max queue size, in batches of max_batch_size
    queue_timeout_ms: int = 30_000
    # Admission by work (export/steps/admission.py): a request that would wait longer than this
    # for the encoder is refused at once. Needs the encoder to measure its own cost, so only
    # the python runtime has it; 0: off. Chosen by measurement (docs/reliability.md).
    max_wait_ms: int = 0
    # python runtime: a merged batch runs in groups of similar length, each within this many
    # token positions (rows x longest row); see export/steps/onnx_encoder/padding.py.
    max_batch_tokens: int = 512
    intra_op_spinning: bool = False  # python runtime: onnxruntime threads busy-wait for work
    # Ensembles answer a request identical to an earlier one from Triton's response cache
    # (when the server has one: serve --cache-mb). See docs/performance.md.
    response_cache: bool = False


_GPU = ServingDefaults(max_batch_size=128, max_queue_delay_us=500, encoder_instances=1, tokenizer_instances=2)
DEFAULTS = {
    # One encoder instance using all cores, and admission by work with a 2 s budget: a second
    # instance no longer raises fp32 throughput, and doubles the overload tail, as each takes
    # its own batch (docs/reliability.md, "Overload"); int8 gains from a second (--instances 2).
    "python": ServingDefaults(
        max_batch_size=64, max_queue_delay_us=0, encoder_instances=1, tokenizer_instances=1, max_wait_ms=2000
    ),
    "onnxruntime": _GPU,
    "tensorrt": _GPU,
}


def check_runtime(runtime: str) -> str:
    if runtime not in DEFAULTS:
        raise InvalidArgumentError(f"unknown runtime {runtime!r}; choose one of {', '.join(DEFAULTS)}")
    return runtime


@dataclass(frozen=True)
class ServingOptions:
    """How a pipeline is served, as asked for on the command line; None: the runtime's default.

    `step_instances` counts each Python step (tokenizer, image preprocess, classifier);
    `instances` each encoder. `tensorrt*`: ONNX Runtime's TensorRT execution provider on the
    `onnxruntime` runtime (fp16, and a folder, on the server, to cache built engines in);
    `tensorrt_fp16` also applies to `--runtime tensorrt` engines.
    """

    runtime: str = "python"
    max_batch_size: int | None = None
    instances: int | None = None
    step_instances: int | None = None
    max_queue_delay_us: int | None = None
    max_queue_size: int | None = None
    queue_timeout_ms: int | None = None
    max_wait_ms: int | None = None
    intra_op_threads: int = 0
    max_batch_tokens: int | None = None
    intra_op_spinning: bool | None = None
    response_cache: bool | None = None
    tensorrt: bool = False
    tensorrt_fp16: bool = False
    tensorrt_cache: str | None = None
    tensorrt_batch: tuple[int, int, int] | None = None  # --runtime tensorrt profile: min, opt, max
    tensorrt_sequence: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        check_runtime(self.runtime)
        if (self.tensorrt or self.tensorrt_cache) and self.runtime != "onnxruntime":
            raise InvalidArgumentError("--tensorrt and --tensorrt-cache apply to --runtime onnxruntime")
        if (self.tensorrt_batch or self.tensorrt_sequence) and self.runtime != "tensorrt":
            raise InvalidArgumentError("--tensorrt-batch and --tensorrt-sequence apply to --runtime tensorrt")
        if self.max_wait_ms and self.runtime != "python":
            raise InvalidArgumentError("--max-wait-ms applies to --runtime python (its encoder measures its own cost)")
        if self.max_wait_ms is not None and self.max_wait_ms < 0:
            raise InvalidArgumentError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")
        for name, triple in (("batch", self.tensorrt_batch), ("sequence", self.tensorrt_sequence)):
            if triple is not None and not 1 <= triple[0] <= triple[1] <= triple[2]:
                raise InvalidArgumentError(f"--tensorrt-{name} needs 1 <= min <= opt <= max, got {triple}")

    def cache(self) -> bool:
        """Whether the models clients call (ensembles, a one-step pipeline's model) use the
        server's response cache."""
        return DEFAULTS[self.runtime].response_cache if self.response_cache is None else self.response_cache

    def admission_ms(self) -> int:
        """The wait budget the entry steps admit requests by; 0: no admission."""
        return DEFAULTS[self.runtime].max_wait_ms if self.max_wait_ms is None else self.max_wait_ms

    def admission(self, encoder: str) -> AdmissionSettings | None:
        """How a pipeline's first step admits the requests it sends to `encoder`."""
        budget = self.admission_ms()
        return AdmissionSettings(encoder, budget) if budget else None

    def batching(self) -> tuple[Batching, Batching]:
        """(Python steps, encoders) batching, with the runtime's defaults filled in.

        With admission on (python runtime), no step has a Triton queue policy unless asked for:
        admission bounds the wait in time, and in Triton 2.51 any policy turns off the
        batcher's prefetching, which stalls a request for 500 ms now and then and, under a
        flood that fills the queue, cuts a step's throughput several times over
        (docs/performance.md, "The 500 ms stall"). A --max-queue-size or --queue-timeout-ms
        given still bounds the entry steps (tokenizer, image preprocess); the encoders'
        queues are what the entry steps admitted."""
        defaults = DEFAULTS[self.runtime]
        size = self.max_batch_size or defaults.max_batch_size
        delay = defaults.max_queue_delay_us if self.max_queue_delay_us is None else self.max_queue_delay_us
        bounds = self._bounds(size)
        steps = Batching(size, delay, self.step_instances or defaults.tokenizer_instances, **bounds)
        encoders = Batching(size, delay, self.instances or defaults.encoder_instances, **bounds)
        return steps, encoders.unbounded() if self.admission_ms() else encoders

    def _bounds(self, size: int) -> dict[str, int]:
        """Queue size and timeout: as given, else the runtime's defaults, else (with admission) none."""
        defaults = DEFAULTS[self.runtime]
        admitted = bool(self.admission_ms())
        queue = 0 if admitted else defaults.queue_batches * size
        timeout_ms = 0 if admitted else defaults.queue_timeout_ms
        queue = queue if self.max_queue_size is None else self.max_queue_size
        timeout_ms = timeout_ms if self.queue_timeout_ms is None else self.queue_timeout_ms
        return {"max_queue_size": queue, "queue_timeout_us": timeout_ms * 1000}
