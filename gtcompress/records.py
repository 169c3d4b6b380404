"""The run's records as typed models: each trained stage (metrics.json's stage entries) and its epochs
(history.jsonl), what export verified (metrics.json's `export`, `export_rejected`) and where its int8 graphs lose
(`export/*.diagnosis.json`), what bench measured (bench.json), and the latency pre-check (candidates.json), and
what the report made of them (report.json).
`RunDir` reads and writes them; every other module reads these fields.

A bench result is one stage's artefact on one backend, device, precision, setting (CPU threads, CUDA graph) and
batch size, with its latency percentiles and throughput.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from .backends import Setting


class Record(BaseModel):
    """A run file's record: its fields typed, unknown keys kept (a newer gtcompress may add some)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class LogitScale(Record):
    """A teacher's logit scale on the test split: per-image std over classes, the largest |logit|, and the mean
    entropy of softmax(z / T) at the students' temperature beside log C (a flat distribution's); and the median
    per-image std on the training split, which `teacher_scale: match:<stage>` compares."""

    std_mean: float
    std_median: float
    std_p95: float
    max_abs: float
    temperature: float
    entropy: float
    log_classes: float
    train_std_median: float | None = None


class StageRecord(Record):
    """A trained (or loaded) stage: its identity, its final test metrics, its size, and how it was made."""

    arch: str
    # its identity (stages.Stage); a run from before these were recorded gets them from its configuration
    title: str | None = None
    role: str | None = None  # standard | generous | control | student
    teacher_stage: str | None = None
    student: str | None = None  # the student architecture (as named) a student stage trains
    qat: bool | None = None  # a quantization-aware copy of a student (stages._qat_stage)
    top1: float
    top5: float | None = None  # where the data set has at least 5 classes
    val_loss: float | None = None
    epochs: int
    train_seconds: float
    images_per_second: float | None = None
    params: int
    macs: int | None = None
    num_classes: int | None = None  # of its data set (a guess's top-1 is 100 / num_classes %)
    test_images: int | None = None  # that top-1 was measured on
    # how it was made, where it applies
    source: str | None = None  # scratch | pretrained | checkpoint | trained | a hub or local model it started from
    method: str | None = None  # a student's distillation method (ce for the CE-only control)
    init: str | None = None  # a generous or control teacher's: scratch | standard
    beta: float | None = None
    k: float | None = None
    scale: str | None = None
    temperature: float | None = None  # the born-again teacher's fixed T
    logit_scale: LogitScale | None = None  # a teacher's
    teacher_scale: float | None = None  # a student's: the factor on its teacher's logits, where not 1
    teacher_scale_match: str | None = None  # the stage whose scale that factor matched
    qat_epochs: int | None = None  # a quantization-aware copy's fine-tuning epochs
    trained_top1: float | None = None  # the trained model's, where the saved one differs (QAT: fake-quantized)

    def as_json(self) -> dict[str, Any]:
        """As metrics.json (and the checkpoint) hold it: the fields that apply."""
        return self.model_dump(mode="json", exclude_none=True)


class Epoch(Record):
    """A completed epoch of a stage (a history.jsonl line): the keys the plots and a resumed run read, exactly
    typed (the pipeline compares epochs as read)."""

    model_config = ConfigDict(strict=True)

    stage: str
    epoch: int
    train_loss: float
    top1: float


class ExportRecord(Record):
    """A verified artefact: which stage at which precision, in which file, verified on which backend, how well."""

    stage: str = Field(validation_alias=AliasChoices("stage", "model"))  # records before 0.2 said "model"
    format: str  # onnx, or the kind of a backend's own artefact (engine)
    backend: str  # the runtime it was verified (and will be timed) on
    precision: str
    path: str  # relative to the run
    bytes: int
    top1: float
    reference_top1: float
    top1_agreement: float
    max_abs_diff: float
    export_seconds: float
    test_images: int
    target: str = "onnxruntime"  # the runtime the graph was made for (an int8 graph differs for TensorRT)
    opset: int | None = None
    # int8 graphs: their format (export.precisions.INT8_FORMATS, or tensorrt), whether they are safe from the int16
    # saturation of onnxruntime's x86 kernels without VNNI (graph.saturating_nodes), the verifying host's CPU features
    int8_format: str | None = None
    saturation_safe: bool | None = None
    cpu_features: list[str] | None = None
    # int8 graphs: how they were made (export.precisions.INT8_METHODS) from which training images; accuracy-aware
    # ones: the held-out training images' top-1 (%) of the fp32 graph and of this one, the drop allowed, and the
    # Conv/MatMul/Gemm nodes left in float (by the accuracy control, or never quantized by NNCF's patterns)
    int8_method: str | None = None
    calibration_images: int | None = None
    calibration_method: str | None = None
    int8_max_drop: float | None = None
    heldout_images: int | None = None
    heldout_top1: float | None = None
    heldout_reference_top1: float | None = None
    float_layers: list[str] | None = None
    int8_head: str | None = None  # plain PTQ: its classifier in float or int8 (ExportConfig.int8_head)


SIDECAR_FORMAT = "gtcompress-export/1"


class ExportSidecar(Record):
    """`export/<stage>.json` beside the artefacts: how to rebuild and feed the model (its ModelSpec's fields and
    the eval transform's geometry) without gtcompress, and which file holds which precision. The deploy scripts,
    Triton, publish and `gtcompress eval` read it."""

    format: Literal["gtcompress-export/1"] = SIDECAR_FORMAT
    arch: str
    num_classes: int
    img_size: int
    resize: int | None = None  # the short side the eval transform resizes to
    interpolation: str | None = None
    crop: list[int] | None = None  # the centre crop (height, width)
    mean: list[float]
    std: list[float]
    class_names: list[str]
    small_stem: bool = False
    input_name: str
    output_name: str
    input_shape: list[Any]
    layout: str = "NCHW"
    opset: int | None = None
    dynamic_batch: bool = True
    checkpoint: str  # the checkpoint's file name the graphs came from
    files: dict[str, str]  # each verified artefact's file name -> its precision


class RejectedExport(Record):
    """An artefact that failed verification on a backend: not kept there, with the tolerance it failed."""

    path: str
    reason: str
    checkpoint_mtime: float
    backend: str = "onnxruntime"
    precision: str | None = None
    failed: Literal["finite", "max_abs_diff", "min_agreement"] | None = None


class LayerError(Record):
    """One quantized layer of an int8 graph against the fp32 graph, on the same images (export.diagnose)."""

    name: str  # its output tensor in the int8 graph (the fp32 graph has a tensor of that name)
    op_type: str  # Conv, MatMul or Gemm
    weight: str | None = None  # its weight initializer in the fp32 graph: the PyTorch parameter's name
    sqnr_db: float  # 20 log10(|fp32| / |int8 - fp32|) of that tensor: what every layer up to it lost
    drop_db: float  # the best SQNR of its nearest matched layers upstream minus its own: what it adds


class Int8Diagnosis(Record):
    """`export/<stage>.int8.diagnosis.json` beside an int8 graph, kept or rejected: its layers that lose the most
    against the fp32 graph on calibration images, and whether this CPU's int8 kernels compute what the graph does
    (simulated in float: what exact int32 accumulation computes)."""

    file: str  # the int8 graph's file name
    images: int  # the calibration images both measures ran on
    layers_measured: int  # quantized layers matched in the fp32 graph
    layers: list[LayerError]  # the worst of them by drop_db, worst first
    kernel_agreement: float  # % of those images with the same top-1 on this CPU's int8 kernels as simulated
    cpu_features: list[str]  # this CPU's (environment.CPU_FEATURES): VNNI or not decides whether its kernels saturate

    def summary(self, n: int = 3) -> str:
        """The `n` worst layers and the kernel agreement, in one line."""
        worst = ", ".join(f"{e.weight or e.name} ({e.op_type}) {e.drop_db:.1f} dB" for e in self.layers[:n])
        return (
            f"worst int8 layers by SQNR drop: {worst or 'none matched'}; this CPU's int8 kernels agree with the "
            f"simulated graph on {self.kernel_agreement:.2f}% of {self.images} calibration images (see "
            f"{Path(self.file).stem}.diagnosis.json)"
        )


class BenchResult(Record):
    stage: str = Field(validation_alias=AliasChoices("stage", "model"))  # bench.json before 0.2 said "model"
    arch: str
    backend: str
    device: str
    precision: str
    batch_size: int
    threads: int | None = None  # CPU backends: the intra-op thread count timed; None: the runtime's default
    cuda_graph: bool = False  # calls replayed as a captured CUDA graph
    artefact: str
    bytes: int
    min_ms: float
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    throughput: float
    iters: int
    samples_ms: list[float] = []

    @property
    def setting(self) -> Setting:
        return Setting(self.threads, self.cuda_graph)


class ModelSize(Record):
    arch: str
    img_size: int
    num_classes: int
    params: int
    macs: int
    checkpoint_bytes: int


class Skipped(Record):
    """Something not timed, and why: a backend (no stage), or one stage's artefact at one batch size."""

    backend: str
    reason: str
    stage: str | None = Field(None, validation_alias=AliasChoices("stage", "model"))
    precision: str | None = None
    batch_size: int | None = None

    def what(self) -> str:
        parts = [self.stage, self.backend, self.precision, f"b{self.batch_size}" if self.batch_size else None]
        return " ".join(p for p in parts if p)


class BenchFile(Record):
    run: str
    created: str
    command: str
    device: dict[str, Any]
    versions: dict[str, str]
    settings: dict[str, Any]
    models: dict[str, ModelSize]
    reference: str | None = None  # the teacher stage speed-ups are measured against
    results: list[BenchResult]
    skipped: list[Skipped] = []
    missing: list[str] = []

    def best(self, stage: str, backend: str, precision: str, batch_size: int) -> BenchResult | None:
        return fastest(self.results, stage, backend, precision, batch_size)


def fastest(
    results: list[BenchResult], stage: str, backend: str, precision: str, batch_size: int
) -> BenchResult | None:
    """The fastest setting (thread count, CUDA graph or not) of one artefact on one backend and batch."""
    key = (stage, backend, precision, batch_size)
    return min(
        (r for r in results if (r.stage, r.backend, r.precision, r.batch_size) == key),
        key=lambda r: r.p50_ms,
        default=None,
    )


def in_order(results: list[BenchResult]) -> list[BenchResult]:
    """Results grouped by batch size, then stage, then backend, precision and setting."""
    return sorted(results, key=lambda r: (r.batch_size, r.stage, r.backend, r.precision, r.cuda_graph, r.threads or 0))


class Candidate(Record):
    """One untrained model timed on the budget's target at its best setting; the teacher's row has no verdicts."""

    arch: str
    params: int
    macs: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    setting: str
    fits: bool | None = None  # within the budget (None: no budget)
    faster_than_teacher: bool | None = None


class CandidateCheck(Record):
    """candidates.json: the latency pre-check of the candidate students, before any training."""

    budget_ms: float | None
    backend: str
    precision: str
    device: str
    batch_size: int
    img_size: int
    machine: dict[str, Any]
    note: str
    teacher: Candidate
    candidates: list[Candidate]

    def target(self) -> str:
        return f"{self.backend} {self.precision} at batch {self.batch_size}"


class ModelFile(Record):
    """A model at one precision: its file (the ONNX export, or the checkpoint at fp32), size and top-1."""

    name: str  # its title, with the precision where reduced
    stage: str
    arch: str
    precision: str
    file: str
    bytes: int | None = None
    top1: float


class Point(ModelFile):
    """One artefact on the accuracy-latency front's plane, timed on the headline backend at its best setting.
    Teachers are points too: a student slower than its teacher buys nothing."""

    role: Literal["student", "teacher"] = "student"
    backend: str | None = None
    p50_ms: float
    p50_interval: tuple[float, float] | None = None  # bootstrap 95% interval of its p50 (from bench.json's samples)
    chance: float | None = None  # the top-1 a guess reaches with 99% probability on its test split, where known
    setting: str | None = None  # its best setting's label (threads, CUDA graph)


class Recommendation(Record):
    """What to ship and why; no pick when nothing is benchmarked or nothing fits the budget."""

    reason: str
    pick: Point | None = None


class Pareto(Record):
    """Every candidate point on the headline backend and batch, the front's names, and the budget applied."""

    backend: str | None
    batch_size: int
    budget_ms: float | None = None
    budget_set_on: str | None = None  # where the run's budget was checked before training, when not here
    points: list[Point] = []
    front: list[str] = []  # the points' names, fastest first
    no_speed: str | None = None  # the line saying the students buy no speed over the teacher, where they don't


class ReportRow(ModelFile):
    """One artefact in the report's table: with its top-5, the differences from its control students, its size
    and cost, and its p50 per backend at its best setting (named)."""

    role: str | None = None
    method: str | None = None  # a student's distillation method (ce: the CE-only control)
    top5: float | None = None
    delta_vs_st_student: float | None = None
    delta_vs_continued_student: float | None = None
    delta_vs_born_again_student: float | None = None
    params: int
    macs: int | None = None
    p50_ms: dict[str, float] = {}  # backend -> p50 at its best setting
    p50_interval: dict[str, tuple[float, float]] = {}  # backend -> that p50's bootstrap 95% interval
    setting: dict[str, str] = {}  # backend -> that setting's label
    speedup: float | None = None  # the reference teacher's fp32 p50 over this row's (students, headline backend)
    size_ratio: float | None = None  # the reference teacher's fp32 file size over this row's (students)


class ReportHeader(Record):
    """Where the numbers come from: the commands, data, method and machine."""

    run: str
    command: str
    bench_command: str | None = None
    data: str
    num_classes: int | None = None
    method: str
    teacher: str | None = None
    student: str | None = None
    machine: str
    trained_on: str
    run_started: str | None = None
    generated: str


class Report(Record):
    """report.json: the report's content, which report.md, report.html, the plots and the model card show."""

    header: ReportHeader
    batch_size: int
    primary_backend: str | None = None  # the headline backend: the registry's first that was benchmarked
    backends: list[str] = []
    teacher: str | None = None  # the stage speed-ups and size ratios compare with
    titles: dict[str, str] = {}  # stage -> its title
    rows: list[ReportRow]
    scales: dict[str, LogitScale] = {}  # teacher stage -> its logit scale, where recorded
    bench: list[BenchResult] = []  # every measurement (without the samples, which stay in bench.json)
    pareto: Pareto
    recommendation: Recommendation
    notes: list[str] = []

    def to_json(self) -> dict[str, Any]:
        """What report.json holds: everything but the latency samples (they stay in bench.json)."""
        return self.model_dump(mode="json", exclude={"bench": {"__all__": {"samples_ms"}}})

    def teacher_row(self) -> ReportRow | None:
        """The reference teacher at fp32, which speed-ups and size ratios compare with."""
        return next((r for r in self.rows if r.stage == self.teacher and r.precision == "fp32"), None)
