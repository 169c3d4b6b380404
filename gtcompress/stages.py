"""The stages of a distill run, defined once: Standard Teacher -> Generous Teacher -> students, and the controls.

Each stage is data: its name (the checkpoint, metrics.json and history.jsonl key), title, role (standard,
generous, control, student), the student architecture it trains, the stage that teaches it, how its model is built,
its objective and schedule, and when it runs. The pipeline loops over `stages(cfg)` in order and writes each stage's
identity into metrics.json; report, bench, publish and the CLI read those fields (`stage_records`), never a name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from timm.models import parse_model_name
from torch import nn

from .config import RunConfig, TrainConfig
from .errors import UserError
from .models import base_arch, create_model, load_weights, model_source
from .objectives import Objective, ce_objective, generous_objective, student_objective
from .qat import fake_quantize, float_weights
from .records import StageRecord
from .rundir import RunDir, damaged

Models = dict[str, nn.Module]  # finished stages' models by name: the teachers of later stages


@dataclass(frozen=True)
class Stage:
    """One stage of a run; every callable takes the run's configuration."""

    name: str
    title: str
    role: str  # standard | generous | control (a teacher's control) | student
    seed_offset: int  # stages that share an offset share initial weights and data order
    arch: Callable[[RunConfig], str]
    build: Callable[[RunConfig, int, Models], nn.Module]  # (cfg, num_classes, finished models) -> model
    objective: Callable[[RunConfig], Objective]
    train: Callable[[RunConfig], TrainConfig]
    teacher: str | None = None  # the stage whose frozen model feeds the objective
    skip: Callable[[RunConfig], str | None] = lambda cfg: None  # why the stage does not run, or None
    record: Callable[[RunConfig], dict[str, Any]] = field(default=lambda cfg: {})  # extra metrics.json keys
    student: str | None = None  # a student stage's architecture, as configured
    # the model's change before its first training step (from training batches), and the model its checkpoint
    # keeps after its last (None: the trained one): quantization-aware training adds fake quantizers, then drops them
    prepare: Callable[[RunConfig], Callable[[nn.Module, Iterable[torch.Tensor]], nn.Module] | None] = lambda cfg: None
    finish: Callable[[RunConfig, int, nn.Module], nn.Module] | None = None
    qat: bool = False  # a quantization-aware copy of a student: not one of the student's controls

    def identity(self) -> dict[str, Any]:
        """What metrics.json records of who the stage is: read by everything downstream instead of its name."""
        return {
            "title": self.title,
            "role": self.role,
            "teacher_stage": self.teacher,
            "student": self.student,
            "qat": self.qat or None,
        }


def _standard(cfg: RunConfig, num_classes: int, models: Models) -> nn.Module:
    t = cfg.teacher
    model = create_model(t.arch, num_classes, t.pretrained, cfg.small_stem)
    if t.checkpoint is not None:
        load_weights(model, t.checkpoint, t.arch, num_classes)
    return model


def _gt_arch(cfg: RunConfig) -> str:
    """The GT's timm architecture: it starts from scratch or from the ST, never from a hub model's weights."""
    return base_arch(cfg.generous.arch or cfg.teacher.arch)


def _st_source(cfg: RunConfig) -> str:
    """Where the ST's weights come from: a checkpoint, timm's pretrained weights, a hub or local model (its name),
    or nothing."""
    t = cfg.teacher
    if t.checkpoint:
        return "checkpoint"
    return t.arch if model_source(t.arch) else "pretrained" if t.pretrained else "scratch"


def _generous(cfg: RunConfig, num_classes: int, models: Models) -> nn.Module:
    g = cfg.generous
    model = create_model(_gt_arch(cfg), num_classes, small_stem=cfg.small_stem)
    if g.checkpoint is not None:
        load_weights(model, g.checkpoint, _gt_arch(cfg), num_classes)
    elif g.init == "standard":
        model.load_state_dict(models["standard_teacher"].state_dict())
    return model


def _born_again(cfg: RunConfig, num_classes: int, models: Models) -> nn.Module:
    return create_model(_gt_arch(cfg), num_classes, small_stem=cfg.small_stem)


def _continued(cfg: RunConfig, num_classes: int, models: Models) -> nn.Module:
    model = create_model(_gt_arch(cfg), num_classes, small_stem=cfg.small_stem)
    model.load_state_dict(models["standard_teacher"].state_dict())
    return model


def _loaded(train: TrainConfig, checkpoint: Any) -> TrainConfig:
    """A loaded model is evaluated, not trained."""
    return train.model_copy(update={"epochs": 0}) if checkpoint else train


def _no_compare(cfg: RunConfig) -> str | None:
    return None if cfg.compare else "without --compare"


def _control(init: str, why_not: str) -> Callable[[RunConfig], str | None]:
    """When a control teacher runs: with --compare, for a GT trained here with `init` (the continued teacher controls
    for a fine-tuned GT's extra epochs, the born-again teacher for a scratch GT being itself a distilled model)."""

    def skip(cfg: RunConfig) -> str | None:
        if not cfg.compare:
            return "without --compare"
        if cfg.generous.checkpoint is not None:
            return "the Generous Teacher was loaded, so its training is not known"
        return None if cfg.generous.init == init else why_not

    return skip


_no_continued = _control(
    "standard", "the Generous Teacher is trained from scratch, so it has no extra epochs over the ST"
)
_no_born_again = _control(
    "scratch", "the Generous Teacher is fine-tuned from the ST: its control is the continued teacher"
)


# The born-again teacher's plain KD (Furlanello et al. 2018): all classes at this fixed T, scaled by T^2.
BORN_AGAIN_TEMPERATURE = 4.0


def _initial(arch: str) -> dict[str, Any]:
    """metrics.json's `source` of a student that starts from a hub or local model's weights."""
    return {"source": arch} if model_source(arch) else {}


def _student_record(arch: str) -> Callable[[RunConfig], dict[str, Any]]:
    return lambda cfg: {"method": cfg.student.method, **_initial(arch)}


def _student_stages(arch: str, suffix: str) -> list[Stage]:
    """One student's stages: distilled from the GT, and with --compare its controls (same seed and schedule)."""

    def stage(
        base: str, teacher: str | None, skip: Callable[[RunConfig], str | None], objective: Callable, record: Callable
    ) -> Stage:
        return Stage(
            base + suffix,
            TITLES[base] + (f" ({arch})" if suffix else ""),
            "student",
            2,
            lambda cfg: base_arch(arch),
            lambda cfg, num_classes, models: create_model(arch, num_classes, small_stem=cfg.small_stem),
            objective,
            lambda cfg: cfg.student.train,
            teacher,
            skip,
            record,
            student=arch,
        )

    kd, ce = (lambda cfg: student_objective(cfg.student)), (lambda cfg: ce_objective(cfg.student.train.label_smoothing))
    return [
        stage("student", "generous_teacher", lambda cfg: None, kd, _student_record(arch)),
        stage("student_from_standard", "standard_teacher", _no_compare, kd, _student_record(arch)),
        stage("student_from_continued", "continued_teacher", _no_continued, kd, _student_record(arch)),
        stage("student_from_born_again", "born_again_teacher", _no_born_again, kd, _student_record(arch)),
        stage("student_ce", None, _no_compare, ce, lambda cfg: {"method": "ce", **_initial(arch)}),
        _qat_stage(arch, suffix),
    ]


def _qat_stage(arch: str, suffix: str) -> Stage:
    """The student after its training, fine-tuned with fake quantizers on its own objective from its own teacher
    (qat.py): its checkpoint keeps the fine-tuned float weights, which the int8 export quantizes."""
    student = "student" + suffix

    def build(cfg: RunConfig, num_classes: int, models: Models) -> nn.Module:
        model = create_model(arch, num_classes, small_stem=cfg.small_stem)
        model.load_state_dict(models[student].state_dict())
        return model

    def finish(cfg: RunConfig, num_classes: int, model: nn.Module) -> nn.Module:
        plain = create_model(arch, num_classes, small_stem=cfg.small_stem)
        plain.load_state_dict(float_weights(model))
        return plain

    return Stage(
        "student_qat" + suffix,
        TITLES["student_qat"] + (f" ({arch})" if suffix else ""),
        "student",
        2,
        lambda cfg: base_arch(arch),
        build,
        lambda cfg: student_objective(cfg.student),
        lambda cfg: cfg.student.qat_train,
        "generous_teacher",
        skip=lambda cfg: None if cfg.student.qat.epochs else "without --qat",
        record=lambda cfg: {"method": cfg.student.method, "qat_epochs": cfg.student.qat.epochs, **_initial(arch)},
        student=arch,
        prepare=lambda cfg: partial(fake_quantize, images=cfg.student.qat.calibration_images),
        finish=finish,
        qat=True,
    )


# Titles of the stages of a one-student run; with several students each student stage's name gains
# `_<student>` and its title ` (<student>)`.
TITLES: dict[str, str] = {
    "standard_teacher": "Standard Teacher",
    "generous_teacher": "Generous Teacher",
    "continued_teacher": "continued teacher",
    "born_again_teacher": "born-again teacher",
    "student": "student <- GT",
    "student_from_standard": "student <- ST",
    "student_from_continued": "student <- continued",
    "student_from_born_again": "student <- born-again",
    "student_ce": "student (CE only)",
    "student_qat": "student <- GT QAT",
}


TEACHER_STAGES: tuple[Stage, ...] = (
    Stage(
        "standard_teacher",
        TITLES["standard_teacher"],
        "standard",
        0,
        lambda cfg: base_arch(cfg.teacher.arch),
        _standard,
        lambda cfg: ce_objective(cfg.teacher.train.label_smoothing),
        lambda cfg: _loaded(cfg.teacher.train, cfg.teacher.checkpoint),
        record=lambda cfg: {"source": _st_source(cfg)},
    ),
    Stage(
        "generous_teacher",
        TITLES["generous_teacher"],
        "generous",
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
            "scale": cfg.generous.scale,
        },
    ),
    # The GT's own code path and seed with the non-target term's weight at 0: only that term differs.
    Stage(
        "continued_teacher",
        TITLES["continued_teacher"],
        "control",
        1,
        _gt_arch,
        _continued,
        lambda cfg: generous_objective(cfg.generous.model_copy(update={"beta": 0.0})),
        lambda cfg: cfg.generous.train,
        teacher="standard_teacher",
        skip=_no_continued,
        record=lambda cfg: {"init": "standard", "beta": 0.0},
    ),
    # The GT's own code path, seed (so its initial weights) and schedule, learning the ST's whole distribution
    # at a fixed T: a same-architecture student of the ST, as a scratch GT is, without the generous term.
    Stage(
        "born_again_teacher",
        TITLES["born_again_teacher"],
        "control",
        1,
        _gt_arch,
        _born_again,
        lambda cfg: generous_objective(
            cfg.generous.model_copy(update={"classes": "all", "temperature": BORN_AGAIN_TEMPERATURE})
        ),
        lambda cfg: cfg.generous.train,
        teacher="standard_teacher",
        skip=_no_born_again,
        record=lambda cfg: {"init": "scratch", "beta": cfg.generous.beta, "temperature": BORN_AGAIN_TEMPERATURE},
    ),
)


def student_suffix(arch: str) -> str:
    """`_<arch>`, safe in a file name with precision suffixes (`student_resnet50_a1_in1k.int8.onnx`); a hub or local
    student is named by its last path part (`local-dir:/models/pub` -> `_pub`)."""
    name = Path(parse_model_name(arch)[1]).name if model_source(arch) else arch
    return "_" + "".join(c if c.isalnum() else "_" for c in name)


def stages(cfg: RunConfig) -> list[Stage]:
    """The run's stages in training order: the teachers once, then each student's stages.

    One student keeps the plain names (`student`, `student_ce`, ...); several get `_<student>` suffixes.
    """
    archs = cfg.student.arch
    suffix = (lambda arch: "") if len(archs) == 1 else student_suffix
    return [*TEACHER_STAGES, *(s for arch in archs for s in _student_stages(arch, suffix(arch)))]


def run_stages(cfg: RunConfig) -> list[str]:
    """The names of the stages a run of `cfg` trains (or loads), in order."""
    return [s.name for s in stages(cfg) if s.skip(cfg) is None]


def recorded_stages(run: RunDir, cfg: RunConfig) -> dict[str, StageRecord]:
    """metrics.json's stage records, as written; damaged where a finished stage's checkpoint has none (each
    checkpoint is written just before its record, so metrics.json lost it)."""
    records = run.stage_records()
    unrecorded = [s.name for s in stages(cfg) if s.name not in records and run.checkpoint(s.name).is_file()]
    if unrecorded:
        names = ", ".join(unrecorded)
        what = (
            f"it has no record of {names}, whose checkpoints are here"
            if run.metrics_path.exists()
            else f"it is missing, but the checkpoints of {names} are here"
        )
        raise damaged(run.metrics_path, what, run.repair_fix)
    return records


def stage_records(run: RunDir) -> dict[str, StageRecord]:
    """Every finished stage's metrics.json record with its identity (title, role, teacher_stage, student), in
    training order; a run with none is refused (nothing reads an empty run). A run from before identities were
    recorded gets them from its saved configuration's stages."""
    cfg = run.saved_config()
    records = recorded_stages(run, cfg)
    if not records:
        raise UserError(f"{run.path} has no finished stage", f"train it: gtcompress distill --resume --out {run.path}")
    known = {s.name: s.identity() for s in stages(cfg)}
    return {
        name: r if r.title is not None else r.model_copy(update=known.get(name, {"title": name}))
        for name, r in records.items()
    }


def distilled_students(records: dict[str, StageRecord], qat: bool = False) -> list[str]:
    """The run's students distilled from the GT (one per student architecture), in training order; with `qat`,
    their quantization-aware copies after them: what is exported, timed and weighed for shipping."""
    return [
        k
        for k, r in records.items()
        if r.role == "student" and r.teacher_stage == "generous_teacher" and (qat or not r.qat)
    ]


def qat_copy(cfg: RunConfig, stage: str) -> str:
    """The quantization-aware copy of the student that `stage` trains (itself, if it is one)."""
    by_name = {s.name: s for s in stages(cfg)}
    if stage not in by_name or by_name[stage].student is None:
        students = [s.name for s in by_name.values() if s.student is not None and not s.qat]
        raise UserError(f"--qat fine-tunes a student; {stage!r} is none", f"pass --stage {' | '.join(students)}")
    return next(s.name for s in by_name.values() if s.qat and s.student == by_name[stage].student)


def controls_of(records: dict[str, StageRecord], stage: str) -> dict[str, str]:
    """A student stage's control students (same student, seed and schedule): teacher stage -> stage name."""
    me = records[stage]
    if me.role != "student":
        return {}
    same = [
        k
        for k, r in records.items()
        if r.role == "student" and r.student == me.student and k != stage and r.qat == me.qat
    ]
    return {records[k].teacher_stage: k for k in same if records[k].teacher_stage}


def deployable_teachers(records: dict[str, StageRecord]) -> list[str]:
    """The teachers a deployment could ship instead of a student (the controls are not), the GT first: the speed
    reference."""
    return [k for role in DEPLOYABLE_ROLES for k, r in records.items() if r.role == role]


STAGE_NAMES: tuple[str, ...] = tuple(TITLES)  # the stages of a one-student run, in training order
DEPLOYABLE_ROLES: tuple[str, ...] = ("generous", "standard")
