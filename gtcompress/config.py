"""Typed configuration of a run: recipes (YAML) mirror these models 1:1, CLI flags override them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, create_model, field_validator, model_validator

from .backends import BACKENDS, RUN_PRECISIONS
from .errors import UserError
from .typed import Strict, one_of, validate


@dataclass(frozen=True)
class Tolerance:
    """What an artefact must match against the PyTorch model on the test split to be kept."""

    max_abs_diff: float | None = None  # largest |delta logits| allowed; None: not checked
    min_agreement: float = 99.0  # % of test images whose top-1 class equals PyTorch's


class AugmentConfig(Strict):
    """Training augmentation passed to `timm.data.create_transform`; None takes the data set's default."""

    scale: tuple[float, float] | None = Field(None, description="RandomResizedCrop area range")
    ratio: tuple[float, float] | None = Field(None, description="RandomResizedCrop aspect range")
    hflip: float | None = Field(None, description="horizontal flip probability")
    color_jitter: float | None = Field(None, description="colour jitter strength")
    auto_augment: str | None = Field(None, description="timm auto-augment policy, e.g. rand-m9-mstd0.5")
    re_prob: float | None = Field(None, description="random erasing probability")
    crop_pct: float | None = Field(None, description="evaluation centre-crop fraction")
    pad_crop: int | None = Field(
        None,
        ge=0,
        description="instead of RandomResizedCrop: a random crop of the input size after this zero padding, "
        "then the flip (the CIFAR protocol: 4)",
    )


class SyntheticConfig(Strict):
    """Generated images: classes grouped into super-classes that share appearance (see data.py)."""

    num_classes: int = Field(10, ge=2, description="number of classes")
    superclasses: int = Field(0, ge=0, description="classes share one of this many base patterns (0: none)")
    train_per_class: int = Field(60, ge=1, description="training images per class")
    val_per_class: int = Field(20, ge=1, description="test images per class")
    class_sep: float = Field(1.0, gt=0, description="strength of a class's own pattern against its super-class's")
    noise: float = Field(0.25, ge=0, description="std of per-pixel Gaussian noise (images in [0, 1])")
    blend: float = Field(0.0, ge=0, lt=0.5, description="each image mixes in a sibling class by up to this weight")
    seed: int = Field(0, description="generator seed (the data, not the training run)")


class DataConfig(Strict):
    """Which data set and how it is split, sized and augmented."""

    name: str = Field(
        "digits",
        description="digits | synthetic | cifar10 | cifar100 | imagefolder:PATH | "
        "hfds/<hub name or directory> | torch/<torchvision name>",
    )
    root: Path | None = Field(None, description="data directory (CIFAR download target, ImageFolder root)")
    download: bool = Field(False, description="download CIFAR if missing")
    img_size: int | None = Field(None, ge=8, description="input resolution; None: the data set's default")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="test split where the data set has none")
    train_fraction: float = Field(1.0, gt=0, le=1, description="stratified subset of the training split")
    workers: int | None = Field(None, ge=0, description="DataLoader workers; None: 0 for in-memory data")
    augment_train: bool = Field(True, description="random training augmentation; false: the eval resize/crop")
    mean: tuple[float, float, float] | None = Field(None, description="normalisation; None: the teacher's")
    std: tuple[float, float, float] | None = Field(None, description="normalisation; None: the teacher's")
    image_key: str = Field("image", description="hfds/: the image column")
    label_key: str = Field("label", description="hfds/: the label column")
    num_classes: int | None = Field(None, ge=2, description="classes, where the data set does not name them")
    class_map: Path | None = Field(
        None, description="timm class-map file: the data set's class names in the order wanted (one a line)"
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)


class TrainConfig(Strict):
    """One stage's optimisation schedule (timm optimizer and scheduler factories)."""

    epochs: int = Field(10, ge=0, description="epochs (0 with a loaded teacher: evaluate only)")
    batch_size: int = Field(64, ge=1, description="global batch size (split across DDP ranks)")
    opt: str = Field("sgd", description="timm optimizer name: sgd, adamw, lamb, ...")
    lr: float = Field(0.05, gt=0, description="peak learning rate")
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0)
    sched: str = Field("cosine", description="timm scheduler name")
    decay_milestones: tuple[int, ...] = Field(
        (90, 180, 270), description="sched multistep: the epochs at which the lr is multiplied by decay_rate"
    )
    decay_rate: float = Field(0.1, gt=0, le=1, description="sched multistep (and step): the lr's factor at a decay")
    warmup_epochs: int = Field(0, ge=0, description="linear learning-rate warm-up")
    min_lr: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    clip_grad: float | None = Field(None, gt=0, description="gradient-norm clipping")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="evaluate and keep an EMA of the weights")


def _teacher_schedule() -> TrainConfig:
    return TrainConfig(epochs=8, warmup_epochs=1)


class TeacherConfig(Strict):
    """The Standard Teacher: trained with CE, fine-tuned from timm weights, or loaded."""

    arch: str = Field("resnet50", description="timm model name: exact, a unique prefix, or a prefix's _100 variant")
    pretrained: bool = Field(False, description="start from timm's pretrained weights (needs network)")
    checkpoint: Path | None = Field(None, description="load this checkpoint and skip training")
    train: TrainConfig = Field(default_factory=_teacher_schedule)


class GenerousConfig(Strict):
    """The Generous Teacher, as its authors' code trains it (EifelTing/Generous-Teacher, train_generous.py):

    CE + beta * min(epoch / warm-up, 1) * mean_i[(k * std(z_ST,i))^2 * KL(ST || GT) over the non-target classes],
    each model's logits at its own T = k * std(logits); from scratch, with the ST's architecture and schedule.
    """

    arch: str | None = Field(None, description="timm model name; None: the teacher's (needs init scratch)")
    init: Literal["scratch", "standard"] = Field(
        "scratch",
        description="scratch: random init, the ST's schedule (the authors') | standard: the ST's weights (a fine-tune)",
    )
    checkpoint: Path | None = Field(None, description="load a trained GT (e.g. another run's) and skip training")
    beta: float = Field(1.0, ge=0, description="weight of the non-target term (the authors' --alpha, 1)")
    k: float = Field(1.0, gt=0, description="temperature multiple of each sample's logit std (the authors' --Tn, 1)")
    warmup: float = Field(
        0.1, ge=0, le=1, description="fraction of epochs over which beta ramps up, per epoch (the authors' 20 of 200)"
    )
    scale: Literal["st_temperature", "k_squared"] = Field(
        "st_temperature",
        description="the term's scale: the ST's T^2 per sample (the authors'), or k^2 (the earlier variant)",
    )
    temperature: float | None = Field(
        None, gt=0, description="None: T = k * std(logits) per sample; a number: that fixed T (an ablation)"
    )
    classes: Literal["non_target", "all"] = Field(
        "non_target", description="distil the ST's non-target classes, or all of them (an ablation: plain KD)"
    )
    train: TrainConfig = Field(
        default_factory=_teacher_schedule,
        description="in a run: the ST's schedule, key by key, unless set (a fine-tune takes fewer epochs)",
    )


class MatchScale(Strict):
    """A teacher's logits rescaled so that their median per-image std on the training split is `match`'s."""

    match: str = Field(description="the run's teacher stage whose scale is matched, e.g. standard_teacher")


class MethodConfig(Strict):
    """A distillation method's knobs (its loss term is objectives.py's, for this class)."""

    ce_weight: float = Field(1.0, ge=0, description="weight of the cross-entropy term")
    warmup: float = Field(0.0, ge=0, le=1, description="fraction of epochs over which the KD term ramps up")
    teacher_scale: float | MatchScale = Field(
        1.0,
        description="the frozen teacher's logits times this before the temperature (a scale control), or "
        "match:<stage>: the ratio of that teacher's median per-image logit std to this one's (training split)",
    )

    @field_validator("teacher_scale", mode="before")
    @classmethod
    def _match_spelled(cls, value: Any) -> Any:
        """`match:<stage>`, as a recipe or --set spells it."""
        if not isinstance(value, str):
            return value
        kind, _, stage = value.partition(":")
        if kind != "match" or not stage:
            raise ValueError(f"a number or match:<stage> is wanted, got {value!r}")
        return MatchScale(match=stage)

    @field_validator("teacher_scale")
    @classmethod
    def _positive(cls, value: float | MatchScale) -> float | MatchScale:
        if isinstance(value, float) and value <= 0:
            raise ValueError(f"a scale must be positive, got {value}")
        return value


class KDConfig(MethodConfig):
    """Hinton KD (mdistiller's CIFAR recipes use ce_weight 0.1, kd_weight 0.9)."""

    kd_weight: float = Field(1.0, ge=0)
    temperature: float = Field(4.0, gt=0)


class DKDConfig(MethodConfig):
    """Decoupled KD (Zhao et al. 2022)."""

    alpha: float = Field(1.0, ge=0, description="TCKD weight")
    beta: float = Field(8.0, ge=0, description="NCKD weight")
    temperature: float = Field(4.0, gt=0)
    warmup: float = 0.2


class LSKDConfig(MethodConfig):
    """KD with logit standardisation (Sun et al. 2024): T = k * std(logits) per sample."""

    ce_weight: float = 0.1
    kd_weight: float = Field(9.0, ge=0)
    k: float = Field(2.0, gt=0)


class DISTConfig(MethodConfig):
    """DIST (Huang et al. 2022): inter- and intra-class Pearson relations.

    Defaults from the authors' ImageNet setting (hunto/DIST_KD: kd_loss_weight 2, tau 1); their CIFAR
    setting (tau 4) is in the CIFAR recipes.
    """

    kd_weight: float = Field(2.0, ge=0, description="weight of the DIST term")
    beta: float = Field(1.0, ge=0, description="inter-class weight")
    gamma: float = Field(1.0, ge=0, description="intra-class weight")
    temperature: float = Field(1.0, gt=0)


# Distillation methods by name: adding one is a config class, a line here, and its term in objectives.TERMS.
METHODS: dict[str, type[MethodConfig]] = {"kd": KDConfig, "dkd": DKDConfig, "lskd": LSKDConfig, "dist": DISTConfig}
Method = Literal[tuple(METHODS)]  # type: ignore[valid-type]


class QATConfig(Strict):
    """Quantization-aware distillation: after the student, a copy of it fine-tuned with fake-quantized weights and
    activations (NNCF), on the student's objective from the student's teacher, at a small learning rate."""

    epochs: int = Field(0, ge=0, description="epochs of quantization-aware distillation after the student (0: none)")
    lr_factor: float = Field(
        0.01, gt=0, le=1, description="its peak learning rate as a fraction of the student's (cosine, no warm-up)"
    )
    calibration_images: int = Field(
        256, ge=1, description="training images that set the fake quantizers' initial ranges"
    )


class _StudentBase(Strict):
    """The student(s): distilled from the Generous Teacher with `method` (the other blocks wait unused)."""

    arch: list[str] = Field(
        ["mobilenetv3_small_100"],
        min_length=1,
        description="timm model name(s), each resolved like teacher.arch: several students of one GT, the teachers "
        "trained once (a recipe may give one name; the command line a,b or a repeated option)",
    )
    method: Method = Field("kd", description=f"distillation method: {' | '.join(METHODS)}")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=15, warmup_epochs=2, clip_grad=5.0))
    qat: QATConfig = Field(default_factory=QATConfig, description=QATConfig.__doc__.splitlines()[0])

    @property
    def qat_train(self) -> TrainConfig:
        """The quantization-aware epochs' schedule: the student's, shorter, slower, without warm-up."""
        return self.train.model_copy(
            update={"epochs": self.qat.epochs, "lr": self.train.lr * self.qat.lr_factor, "warmup_epochs": 0}
        )

    @property
    def method_config(self) -> MethodConfig:
        return getattr(self, self.method)

    @field_validator("arch", mode="before")
    @classmethod
    def _a_list(cls, value: Any) -> Any:
        """One name is a list of one: the students stay a list from the recipe to the report."""
        return [value] if isinstance(value, str) else value

    @field_validator("arch")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"student.arch must name distinct students, got {value}")
        return value


# One block per registered method (student.kd, student.dkd, ...), as recipes spell them.
StudentConfig = create_model(
    "StudentConfig",
    __base__=_StudentBase,
    __doc__=_StudentBase.__doc__,
    **{
        name: (cls, Field(default_factory=cls, description=cls.__doc__.splitlines()[0]))
        for name, cls in METHODS.items()
    },
)


class BudgetConfig(Strict):
    """A latency budget on the deployment target, checked before any training with untrained candidates."""

    latency_ms: float | None = Field(
        None,
        gt=0,
        description="p50 budget (ms) on the target: slower students are dropped before training; None: no check",
    )
    backend: str | None = Field(
        None,
        description=f"target runtime: {' | '.join(BACKENDS)}; None: the best available (tensorrt on CUDA where "
        "installed, else onnxruntime)",
    )
    batch: int = Field(1, ge=1, description="batch size of the timed calls")
    precision: str | None = Field(None, description="precision on the target; None: fp16 on CUDA, fp32 on CPU")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the candidates are timed")
    iters: int = Field(50, ge=5, description="timed calls per candidate")

    @field_validator("backend")
    @classmethod
    def _registered(cls, value: str | None) -> str | None:
        one_of("backend", () if value is None else (value,), BACKENDS)
        return value

    @field_validator("precision")
    @classmethod
    def _run_somewhere(cls, value: str | None) -> str | None:
        one_of("precision", () if value is None else (value,), RUN_PRECISIONS)
        return value


class RunConfig(Strict):
    """Everything a `gtcompress distill` run does; written resolved to `<run>/config.yaml`."""

    seed: int = Field(0, description="random seed of every stage (data order, initial weights, augmentation)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto (CUDA where available) | cpu | cuda")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="training autocast dtype: fp32 | bf16 (CUDA, or a CPU with avx512_bf16/amx_bf16) | fp16 (CUDA)",
    )
    dist_bn: Literal["reduce", "broadcast"] = Field(
        "reduce",
        description="under torchrun, before every evaluation and checkpoint: the ranks' BatchNorm statistics "
        "averaged (reduce) or rank 0's (broadcast), so the accuracy recorded is the saved model's",
    )
    channels_last: bool = True
    small_stem: bool = Field(
        False, description="every model with a CIFAR-style stem for 32-px inputs: first conv 3x3 stride 1, no max-pool"
    )
    compare: bool = Field(
        False,
        description="also train the controls: students of the ST and of CE alone, and a control teacher with its "
        "student (born-again for a GT from scratch, the continued ST for a fine-tuned GT)",
    )
    compile: bool = Field(False, description="torch.compile the model being trained")
    tensorboard: bool = Field(False, description="also log every epoch's scalars to <run>/tensorboard")
    cache_teacher_logits: bool | None = Field(
        None, description="reuse the frozen teachers' logits across epochs; None: only without augmentation"
    )
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    generous: GenerousConfig = Field(default_factory=GenerousConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    environment: dict[str, Any] | None = Field(None, description="recorded by a run; ignored on input")

    @model_validator(mode="before")
    @classmethod
    def _gt_takes_the_st_schedule(cls, data: Any) -> Any:
        """The GT's schedule is the ST's, key by key, unless set: the authors train both alike."""
        if not isinstance(data, dict) or isinstance(data.get("generous"), GenerousConfig):
            return data
        generous = dict(data.get("generous") or {})
        if not isinstance(generous.get("train"), TrainConfig):
            generous["train"] = {**_schedule_of(data.get("teacher")), **(generous.get("train") or {})}
        return {**data, "generous": generous}


def _schedule_of(teacher: Any) -> dict[str, Any]:
    """A raw or built teacher block's schedule as keys: the keys it sets, or the default schedule's."""
    if isinstance(teacher, TeacherConfig):
        return teacher.train.model_dump()
    train = (teacher or {}).get("train")
    if train is None:
        return _teacher_schedule().model_dump()
    return train.model_dump() if isinstance(train, TrainConfig) else dict(train)


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `tree['a']['b'] = value` for `dotted='a.b'`, creating levels as needed."""
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def _read_recipe(recipe: Path) -> dict[str, Any]:
    if not recipe.is_file():
        raise UserError(f"recipe {recipe} not found", "pass an existing YAML file, e.g. recipes/digits.yaml")
    try:
        tree = yaml.safe_load(recipe.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"recipe {recipe} is not valid YAML: {e}".replace("\n", " "), "fix the YAML syntax") from None
    if not isinstance(tree, dict):
        raise UserError(f"recipe {recipe} must be a mapping of keys", "see recipes/digits.yaml")
    return tree


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{'a': {'b': 1}}` -> `{'a.b': 1}`."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def given_keys(recipe: Path | None, overrides: dict[str, Any]) -> set[str]:
    """The dotted keys a command line sets: its recipe's and its options'."""
    return set(flatten(_read_recipe(recipe)) if recipe is not None else {}) | set(overrides)


def differences(saved: RunConfig, requested: RunConfig, keys: set[str]) -> list[str]:
    """'key: value here, saved value' for each of `keys` whose values differ between the two configurations."""
    a, b = flatten(requested.model_dump(mode="json")), flatten(saved.model_dump(mode="json"))
    prefixes = tuple(f"{k}." for k in keys)
    compared = sorted(k for k in a if k in keys or k.startswith(prefixes))
    return [f"{k}: {a[k]!r} here, {b.get(k)!r} saved" for k in compared if a[k] != b.get(k)]


def load_config(recipe: Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML recipe (optional), apply dotted-key overrides, validate."""
    tree = _read_recipe(recipe) if recipe is not None else {}
    for dotted, value in (overrides or {}).items():
        set_dotted(tree, dotted, value)
    tree.pop("environment", None)  # a run's record of where it ran, not an input
    return validate(RunConfig, tree, f"recipe {recipe}" if recipe else "configuration")


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
