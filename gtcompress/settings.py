"""What the commands after training do: export, bench and publish settings, frozen once validated. Their field
descriptions and defaults are the CLI's help; this module imports no torch, so `gtcompress --help` answers at once.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from .backends import BACKENDS, RUN_PRECISIONS, builders
from .config import Tolerance
from .errors import UserError
from .export.precisions import DEFAULT_TOLERANCES, INT8_FORMATS, INT8_METHODS, PRECISIONS
from .typed import Frozen, one_of


def parse_tolerances(items: list[str]) -> dict[str, Tolerance]:
    """Defaults overridden by `PRECISION.FIELD=VALUE` items, e.g. `int8.min_agreement=90`."""
    out = dict(DEFAULT_TOLERANCES)
    for item in items:
        key, eq, value = item.partition("=")
        precision, dot, name = key.strip().partition(".")
        if not eq or not dot or precision not in out or name not in ("max_abs_diff", "min_agreement"):
            raise UserError(
                f"--tolerance {item!r} is not PRECISION.FIELD=VALUE",
                "e.g. --tolerance int8.min_agreement=90 or --tolerance fp32.max_abs_diff=1e-2",
            )
        try:
            number = None if value.strip().lower() == "none" else float(value)
        except ValueError:
            raise UserError(f"--tolerance {item!r}: {value!r} is not a number", "pass a number or none") from None
        out[precision] = replace(out[precision], **{name: number})
    return out


class ExportConfig(Frozen):
    """What `gtcompress export` does: which stage's model, which precisions, where, and how strictly verified.

    The field descriptions and defaults are the CLI's.
    """

    run: Path | None = Field(None, description="Run directory (default runs/latest).")
    checkpoint: Path | None = Field(None, description="Export this gtcompress checkpoint, not a run's.")
    stage: str = Field(
        "student", description="Which of the run's models: a stage (student, generous_teacher, standard_teacher, ...)."
    )
    precisions: tuple[str, ...] = Field(
        ("fp32",), description=f"{' | '.join(PRECISIONS)}, repeatable or comma-separated (fp32 is always exported)."
    )
    backends: tuple[str, ...] = Field(
        (),
        description=f"Also build and verify the artefacts of these backends ({' | '.join(s.name for s in builders())}"
        ", e.g. TensorRT engines on CUDA); the ONNX files every ONNX runtime runs are always made.",
    )
    max_batch: PositiveInt = Field(32, description="Largest batch of the engines and of Triton.")
    workspace_gib: float = Field(2.0, gt=0, description="TensorRT builder workspace (GiB).")
    opt_batches: tuple[PositiveInt, ...] = Field(
        (1, 8, 32), min_length=1, description="Batch sizes the engines tune a profile for (the bench's defaults)."
    )
    calibration_images: PositiveInt = Field(256, description="Training images for int8 calibration.")
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="int8 calibration: minmax | entropy | percentile"
    )
    int8_format: str = Field(
        "portable", description=f"int8 graph for onnxruntime: {'; '.join(f.help for f in INT8_FORMATS.values())}."
    )
    int8_method: str = Field(
        "ptq", description=f"How int8 graphs are made: {'; '.join(m.help for m in INT8_METHODS.values())}."
    )
    int8_max_drop: float = Field(
        0.5,
        ge=0,
        description="Top-1 points accuracy-aware int8 may lose on held-out training images (giving it "
        "chooses --int8-method accuracy-aware).",
    )
    int8_heldout_images: PositiveInt = Field(
        1000, description="Training images, apart from the calibration ones, that accuracy-aware int8 measures on."
    )
    int8_head: Literal["float", "int8"] = Field(
        "float",
        description="The classifier (the layer that writes the logits) in a plain-PTQ int8 graph: float | int8. "
        "Float: logits as wide as a Generous Teacher's have no 8-bit grid that keeps their argmax.",
    )
    opset: int | None = Field(None, description="ONNX opset (default: the exporter's).")
    dataset: str | None = Field(None, description="Data set to verify on (default: the run's).")
    data_root: Path | None = Field(None, description="Data directory (CIFAR, ImageFolder).")
    out: Path | None = Field(
        None, description="Where export/ and metrics.json go (default: the run, or the checkpoint's folder)."
    )
    triton: Path | None = Field(None, description="Also write a Triton model repository here.")
    tolerances: dict[str, Tolerance] = Field(
        default_factory=lambda: dict(DEFAULT_TOLERANCES), description="Verification tolerance per precision."
    )
    batch_size: PositiveInt = Field(64, description="Verification batch.")
    keep_going: bool = Field(
        False,
        description="A reduced precision that fails verification is reported and "
        "skipped instead of stopping the export (gtcompress run).",
    )

    @field_validator("precisions")
    @classmethod
    def _known_precisions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Known ones only, in the registry's order (fp32 first: the others are converted from it)."""
        one_of("precision", value, PRECISIONS)
        return tuple(p for p in PRECISIONS if p in {"fp32", *value})

    @field_validator("int8_format")
    @classmethod
    def _known_int8_format(cls, value: str) -> str:
        one_of("int8 format", [value], INT8_FORMATS)
        return value

    @field_validator("int8_method")
    @classmethod
    def _known_int8_method(cls, value: str) -> str:
        one_of("int8 method", [value], INT8_METHODS)
        return value

    @field_validator("backends")
    @classmethod
    def _builders(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Backends that build an artefact of their own, each once."""
        one_of("backend that builds its own artefact", value, [s.name for s in builders()])
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _one_source(self) -> ExportConfig:
        if self.checkpoint is not None and self.run is not None:
            raise ValueError("both a run directory and --checkpoint given: pass one of them")
        return self


DEFAULT_ITERS, DEFAULT_SECONDS = 200, 2.0


class BenchConfig(Frozen):
    """What `gtcompress bench` measures; None means everything available. Descriptions and defaults are the CLI's."""

    run: Path | None = Field(None, description="Run directory (default runs/latest).")
    backends: tuple[str, ...] | None = Field(
        None, description=f"{' | '.join(BACKENDS)}, repeatable or comma-separated (default: every installed one)."
    )
    precisions: tuple[str, ...] | None = Field(
        None,
        description=f"{' | '.join(RUN_PRECISIONS)}, repeatable or comma-separated (default: every verified one; "
        "torch: fp32, and fp16 on CUDA).",
    )
    stages: tuple[str, ...] | None = Field(
        None,
        description="The run's stages to time, repeatable (default: every student distilled from the GT, and the GT).",
    )
    batch_sizes: tuple[PositiveInt, ...] = Field((1, 8, 32), min_length=1, description="Comma-separated batch sizes.")
    warmup: int = Field(10, ge=0, description="Untimed calls before each measurement.")
    iters: PositiveInt | None = Field(
        None, description=f"Timed calls per measurement (default {DEFAULT_ITERS}, or --seconds)."
    )
    seconds: PositiveFloat | None = Field(
        None, description=f"Time budget per measurement (default {DEFAULT_SECONDS:g} s)."
    )
    threads: tuple[PositiveInt, ...] | Literal["auto"] = Field(
        "auto",
        description="CPU thread counts to time each model at, comma-separated, or auto: the powers of two up to "
        "the cores (each model is reported at its best).",
    )
    cuda_graph: Literal["both", "on", "off"] = Field(
        "both", description="On CUDA: time eager calls, replayed CUDA graphs, or both (where the backend has them)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto (each backend on CUDA where it runs there, else on the CPU) | cpu | cuda"
    )

    @field_validator("backends")
    @classmethod
    def _registered(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        one_of("backend", value or (), BACKENDS)
        return value

    @field_validator("precisions")
    @classmethod
    def _known(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        one_of("precision", value or (), RUN_PRECISIONS)
        return value

    def limits(self) -> tuple[int | None, float | None]:
        """(iters, seconds) of each measurement: both defaults when neither is set, else what is set."""
        if self.iters is None and self.seconds is None:
            return DEFAULT_ITERS, DEFAULT_SECONDS
        return self.iters, self.seconds


def parse_batch_sizes(text: str, option: str = "--batch-sizes") -> tuple[int, ...]:
    """`"1,8,32"` -> (1, 8, 32); a clear error naming `option` for anything but a list of positive integers."""
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise UserError(f"{option} '{text}' is not a list of positive integers", f"e.g. {option} 1,8,32")
    return tuple(dict.fromkeys(sizes))


def parse_threads(text: str) -> tuple[int, ...] | Literal["auto"]:
    """`auto`, or a comma-separated list of positive thread counts."""
    return "auto" if text.strip() == "auto" else parse_batch_sizes(text, "--threads")


class PublishConfig(Frozen):
    """What `gtcompress publish` writes and where it sends it. The field descriptions are the CLI's help texts."""

    run: Path | None = Field(None, description="Run directory (default runs/latest).")
    out: Path = Field(description="The folder to write (an earlier publish folder there is replaced).")
    stage: str | None = Field(
        None, description="The model to publish (default: the run's student distilled from the GT)."
    )
    license: str = Field("other", description="The card's license, a Hub license id (apache-2.0, mit, cc-by-4.0, ...).")
    push: str | None = Field(
        None, description="Then upload the folder to this Hub repo (ORG/NAME); token: HF_TOKEN or hf auth login."
    )
    private: bool = Field(False, description="With --push: create the repo private.")
    force: bool = Field(False, description="Replace --out even where it is not an earlier publish folder.")
