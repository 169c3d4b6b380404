"""A teacher's logit scale: what a student's temperature sees of it.

KD divides both models' logits by one T, so a teacher with larger logits gives sharper targets at that T: its
scale acts as a lower temperature. Recording each teacher's scale, and rescaling a teacher's logits to another's
(`teacher_scale`), tells what a teacher teaches apart from how loudly it says it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import MatchScale, RunConfig
from .errors import UserError
from .records import LogitScale, StageRecord
from .typed import with_values


def per_image_std(logits: Tensor) -> Tensor:
    """Each image's std over its classes (unbiased, as the Generous Teacher's temperature takes it)."""
    return logits.float().std(dim=1)


def measure_scale(test_logits: Tensor, train_logits: Tensor | None, temperature: float) -> LogitScale:
    """A teacher's scale on the test split, its entropy at the student's temperature, and its median per-image
    std on the training split (what `match:` compares)."""
    std = per_image_std(test_logits)
    log_p = torch.log_softmax(test_logits.float() / temperature, dim=1)
    entropy = -(log_p.exp() * log_p).sum(1)
    return LogitScale(
        std_mean=std.mean().item(),
        std_median=std.median().item(),
        std_p95=std.quantile(0.95).item(),
        max_abs=test_logits.abs().max().item(),
        temperature=temperature,
        entropy=entropy.mean().item(),
        log_classes=math.log(test_logits.shape[1]),
        train_std_median=per_image_std(train_logits).median().item() if train_logits is not None else None,
    )


def student_temperature(cfg: RunConfig) -> float:
    """The temperature the run's students see their teacher at: the method's, or KD's where it has none (LS-KD
    sets one per image)."""
    return getattr(cfg.student.method_config, "temperature", cfg.student.kd.temperature)


def resolve_scale(cfg: RunConfig, teacher: str, records: dict[str, StageRecord]) -> float:
    """The factor on `teacher`'s logits: the configured number, or for `match:<stage>` the ratio of that stage's
    median per-image std on the training split to the teacher's."""
    scale = cfg.student.method_config.teacher_scale
    if not isinstance(scale, MatchScale):
        return scale
    medians = {name: _train_median(name, records) for name in (scale.match, teacher)}
    return medians[scale.match] / medians[teacher]


def _train_median(stage: str, records: dict[str, StageRecord]) -> float:
    record = records.get(stage)
    scale = record.logit_scale if record is not None else None
    if scale is None or scale.train_std_median is None:
        raise UserError(
            f"teacher_scale: no logit scale of {stage} on the training split is recorded in this run",
            "match a teacher stage of this run on a map-style data set, or give a number",
        )
    return scale.train_std_median


def with_scale(cfg: RunConfig, scale: float) -> RunConfig:
    """The run's configuration with its method's teacher_scale resolved to a number (a copy; `cfg` is unchanged)."""
    return with_values(cfg, {f"student.{cfg.student.method}.teacher_scale": scale})
