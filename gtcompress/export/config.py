"""Export settings: which model, which precisions, and the tolerances an artefact must meet to be kept."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from ..errors import UserError
from ..stages import STAGE_NAMES
from ..typed import Frozen, one_of
from .graph import INT8_FORMATS
from .precisions import DEFAULT_TOLERANCES, PRECISIONS, Tolerance


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
    stage: str = Field("student", description=f"Which of the run's models: {' | '.join(STAGE_NAMES)}.")
    precisions: tuple[str, ...] = Field(
        ("fp32",), description=f"{' | '.join(PRECISIONS)}, repeatable or comma-separated (fp32 is always exported)."
    )
    trt: bool = Field(False, description="Also build and verify TensorRT engines (CUDA).")
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

    @model_validator(mode="after")
    def _one_source(self) -> ExportConfig:
        if self.checkpoint is not None and self.run is not None:
            raise ValueError("both a run directory and --checkpoint given: pass one of them")
        return self
