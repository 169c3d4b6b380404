"""Export settings: which model, which precisions, and the tolerances an artefact must meet to be kept."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import UserError
from ..rundir import PRECISIONS
from ..stages import STAGE_NAMES, is_stage


@dataclass(frozen=True)
class Tolerance:
    """What an artefact must match against the PyTorch model on the test split to be kept."""

    max_abs_diff: float | None = None  # largest |delta logits| allowed; None: not checked
    min_agreement: float = 99.0  # % of test images whose top-1 class equals PyTorch's


# fp32 must reproduce the logits (only float re-association differs); reduced precisions are judged by
# their predictions, since their logits legitimately move by up to a few tenths (fp16) or units (int8).
DEFAULT_TOLERANCES = {
    "fp32": Tolerance(max_abs_diff=1e-3, min_agreement=99.0),
    "fp16": Tolerance(min_agreement=99.0),
    "int8": Tolerance(min_agreement=95.0),
}


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


CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class ExportConfig(BaseModel):
    """What `gtcompress export` does: which stage's model, which precisions, where, and how strictly verified.

    The field descriptions are the CLI's help texts.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: Path | None = Field(None, description="Run directory (default runs/latest).")
    checkpoint: Path | None = Field(None, description="Export this gtcompress checkpoint, not a run's.")
    stage: str = Field("student", description=f"Which of the run's models: {' | '.join(STAGE_NAMES)}.")
    precisions: tuple[str, ...] = Field(
        ("fp32",), description="fp32 | fp16 | int8, repeatable or comma-separated (fp32 is always exported)."
    )
    trt: bool = Field(False, description="Also build and verify TensorRT engines (CUDA).")
    max_batch: int = Field(32, description="Largest batch of the engines and of Triton.")
    workspace_gib: float = Field(2.0, description="TensorRT builder workspace (GiB).")
    opt_batches: tuple[int, ...] = Field(
        (1, 8, 32), description="Batch sizes the engines tune a profile for (the bench's defaults)."
    )
    calibration_images: int = Field(256, description="Training images for int8 calibration.")
    calibration_method: str = Field("minmax", description="int8 calibration: minmax | entropy | percentile")
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
    batch_size: int = Field(64, description="Verification batch.")
    keep_going: bool = Field(
        False,
        description="A reduced precision that fails verification is reported and "
        "skipped instead of stopping the export (gtcompress run).",
    )

    @model_validator(mode="after")
    def _check(self) -> ExportConfig:
        """User mistakes as UserError (pydantic passes them through unchanged)."""
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            raise UserError(f"unknown precision '{unknown[0]}'", f"choose from {', '.join(PRECISIONS)}")
        if not is_stage(self.stage):
            raise UserError(
                f"unknown model '{self.stage}'",
                f"choose from {', '.join(STAGE_NAMES)} (with several students: <stage>_<student>)",
            )
        if self.calibration_method not in CALIBRATION_METHODS:
            raise UserError(
                f"unknown calibration method '{self.calibration_method}'",
                f"choose from {', '.join(CALIBRATION_METHODS)}",
            )
        if not self.opt_batches or min(self.opt_batches) < 1:
            raise UserError(f"--opt-batches {list(self.opt_batches)} are not positive batch sizes", "e.g. 1,8,32")
        for name in ("max_batch", "calibration_images", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1", "pass a positive number")
        if self.checkpoint is not None and self.run is not None:
            raise UserError("both a run directory and --checkpoint given", "pass one of them")
        # fp32 first: the other artefacts are converted from it
        object.__setattr__(self, "precisions", tuple(p for p in PRECISIONS if p in {"fp32", *self.precisions}))
        return self
