"""The stages of a distill run, defined once: Standard Teacher -> Generous Teacher -> students, and the controls.

Each stage is data: its name (the checkpoint, metrics.json and history.jsonl key), title, seed offset, the stage
that teaches it, how its model is built, its objective and schedule, and when it runs. The pipeline loops over
`STAGES` in order; report, bench, export and the benchmarks read names and titles from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .config import RunConfig, TrainConfig
from .models import create_model, load_weights
from .objectives import Objective, ce_objective, generous_objective, student_objective

Models = dict[str, nn.Module]  # finished stages' models by name: the teachers of later stages


@dataclass(frozen=True)
class Stage:
    """One stage of a run; every callable takes the run's configuration."""

    name: str
    title: str
    seed_offset: int  # stages that share an offset share initial weights and data order
    arch: Callable[[RunConfig], str]
    build: Callable[[RunConfig, int, Models], nn.Module]  # (cfg, num_classes, finished models) -> model
    objective: Callable[[RunConfig], Objective]
    train: Callable[[RunConfig], TrainConfig]
    teacher: str | None = None  # the stage whose frozen model feeds the objective
    skip: Callable[[RunConfig], str | None] = lambda cfg: None  # why the stage does not run, or None
    record: Callable[[RunConfig], dict[str, Any]] = field(default=lambda cfg: {})  # extra metrics.json keys


def _standard(cfg: RunConfig, num_classes: int, models: Models) -> nn.Module:
    t = cfg.teacher
    model = create_model(t.arch, num_classes, t.pretrained)
    if t.checkpoint is not None:
        load_weights(model, t.checkpoint, t.arch, num_classes)
    return model


def _gt_arch(cfg: RunConfig) -> str:
    return cfg.generous.arch or cfg.teacher.arch


def _generous(cfg: RunConfig, num_classes: int, models: Models) -> nn.Module:
    g = cfg.generous
    model = create_model(_gt_arch(cfg), num_classes)
    if g.checkpoint is not None:
        load_weights(model, g.checkpoint, _gt_arch(cfg), num_classes)
    elif g.init == "standard":
        model.load_state_dict(models["standard_teacher"].state_dict())
    return model


def _continued(cfg: RunConfig, num_classes: int, models: Models) -> nn.Module:
    model = create_model(_gt_arch(cfg), num_classes)
    model.load_state_dict(models["standard_teacher"].state_dict())
    return model


def _student(cfg: RunConfig, num_classes: int, models: Models) -> nn.Module:
    return create_model(cfg.student.arch, num_classes)


def _loaded(train: TrainConfig, checkpoint: Any) -> TrainConfig:
    """A loaded model is evaluated, not trained."""
    return train.model_copy(update={"epochs": 0}) if checkpoint else train


def _no_compare(cfg: RunConfig) -> str | None:
    return None if cfg.compare else "without --compare"


def _no_continued(cfg: RunConfig) -> str | None:
    """The continued teacher controls for the GT's extra epochs; it has none to control for in these cases."""
    if not cfg.compare:
        return "without --compare"
    if cfg.generous.checkpoint is not None:
        return "the Generous Teacher was loaded, so its extra training is not known"
    if cfg.generous.init == "scratch":
        return "the Generous Teacher is trained from scratch, so it has no extra epochs over the ST"
    return None


def _student_record(teacher: str) -> Callable[[RunConfig], dict[str, Any]]:
    return lambda cfg: {"teacher_stage": teacher, "method": cfg.student.method}


def _student_stage(name: str, title: str, teacher: str, skip: Callable[[RunConfig], str | None]) -> Stage:
    return Stage(
        name,
        title,
        2,
        lambda cfg: cfg.student.arch,
        _student,
        lambda cfg: student_objective(cfg.student),
        lambda cfg: cfg.student.train,
        teacher,
        skip,
        _student_record(teacher),
    )


STAGES: tuple[Stage, ...] = (
    Stage(
        "standard_teacher",
        "Standard Teacher",
        0,
        lambda cfg: cfg.teacher.arch,
        _standard,
        lambda cfg: ce_objective(cfg.teacher.train.label_smoothing),
        lambda cfg: _loaded(cfg.teacher.train, cfg.teacher.checkpoint),
        record=lambda cfg: {
            "source": "checkpoint" if cfg.teacher.checkpoint else "pretrained" if cfg.teacher.pretrained else "scratch"
        },
    ),
    Stage(
        "generous_teacher",
        "Generous Teacher",
        1,
        _gt_arch,
        _generous,
        lambda cfg: generous_objective(cfg.generous),
        lambda cfg: _loaded(cfg.generous.train, cfg.generous.checkpoint),
        teacher="standard_teacher",
        record=lambda cfg: {
            "source": "checkpoint" if cfg.generous.checkpoint else "trained",
            "init": cfg.generous.init,
            "beta": cfg.generous.beta,
            "k": cfg.generous.k,
        },
    ),
    # The GT's own code path and seed with the non-target term's weight at 0: only that term differs.
    Stage(
        "continued_teacher",
        "continued teacher",
        1,
        _gt_arch,
        _continued,
        lambda cfg: generous_objective(cfg.generous.model_copy(update={"beta": 0.0})),
        lambda cfg: cfg.generous.train,
        teacher="standard_teacher",
        skip=_no_continued,
        record=lambda cfg: {"init": "standard", "beta": 0.0},
    ),
    _student_stage("student", "student <- GT", "generous_teacher", lambda cfg: None),
    _student_stage("student_from_standard", "student <- ST", "standard_teacher", _no_compare),
    _student_stage("student_from_continued", "student <- continued", "continued_teacher", _no_continued),
    Stage(
        "student_ce",
        "student (CE only)",
        2,
        lambda cfg: cfg.student.arch,
        _student,
        lambda cfg: ce_objective(cfg.student.train.label_smoothing),
        lambda cfg: cfg.student.train,
        skip=_no_compare,
        record=lambda cfg: {"method": "ce"},
    ),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
TITLES: dict[str, str] = {s.name: s.title for s in STAGES}
