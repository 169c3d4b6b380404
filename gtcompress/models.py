"""Models: timm name resolution, creation, self-describing checkpoints, size (params, MACs)."""

from __future__ import annotations

import difflib
import functools
import pickle
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_data_config
from timm.models import (
    EfficientNet,
    MobileNetV3,
    ResNet,
    get_pretrained_cfg,
    load_state_dict,
    parse_model_name,
    resolve_model_input_args,
)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import UserError, first_line
from .files import torch_save

CHECKPOINT_FORMAT = "gtcompress-checkpoint/1"


def resolve_model_name(name: str) -> tuple[str, str | None]:
    """A timm architecture for `name`: exact, unique prefix, or the width-1.0 (`_100`) variant of a prefix.

    Returns the name and, when it differs from the input, a sentence saying how it was resolved.
    A pretrained tag (`resnet50.a1_in1k`) is kept, and a hub or local name (`hf-hub:ORG/NAME`, `local-dir:PATH`)
    passes as it is once its config.json is read. Anything else is an error listing close matches.
    """
    if model_source(name):
        name = name.strip()
        return name, f"{name} -> {base_arch(name)} (its config.json's architecture, starting from its weights)"
    arch, dot, tag = name.strip().replace("-", "_").partition(".")
    known = timm.list_models()
    if arch in known:
        resolved = arch
        note = None
    else:
        prefixed = [m for m in known if m.startswith(arch)]
        if len(prefixed) == 1:
            resolved, note = prefixed[0], "its unique prefix match"
        elif arch + "_100" in prefixed:
            others = ", ".join(m for m in prefixed if m != arch + "_100")
            resolved, note = arch + "_100", f"timm's width-1.0 variant; also: {others}"
        elif prefixed:
            listed = ", ".join(prefixed[:8]) + (", ..." if len(prefixed) > 8 else "")
            raise UserError(f"model name '{name}' is ambiguous: {listed}", "pass one of these exact names")
        else:
            close = difflib.get_close_matches(arch, known, n=5, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}?" if close else "list names with `gtcompress models PATTERN`"
            raise UserError(f"unknown timm model '{name}'", hint)
    full = resolved + dot + tag
    return full, (f"{name} -> {full} ({note})" if note else None)


# How to fix a hub or local name that cannot be read, by its source.
SOURCE_HINTS = {
    "hf-hub": "connect to the internet (and unset HF_HUB_OFFLINE), or download the folder and pass local-dir:PATH",
    "local-dir": "pass a folder written by `gtcompress publish` or timm's save_for_hf (config.json and weights)",
}


def model_source(name: str) -> str | None:
    """`hf-hub` or `local-dir` for a name that brings its own config and weights (timm's prefixes), else None."""
    try:
        return parse_model_name(name.strip())[0]
    except ValueError as e:
        raise UserError(first_line(e), "pass a timm name, hf-hub:ORG/NAME or local-dir:PATH") from None


@functools.cache  # a hub name would otherwise cost a request per stage
def _source_config(name: str) -> tuple[str, dict[str, Any]]:
    """The timm architecture and the pretrained config (mean, std, input size, ...) of a hub or local model."""
    source, where = parse_model_name(name)
    if source == "local-dir" and not (Path(where) / "config.json").is_file():
        missing = f"no config.json in {where}" if Path(where).is_dir() else f"no folder {where}"
        raise UserError(f"{name}: {missing}", SOURCE_HINTS[source])
    try:
        args = resolve_model_input_args(name)
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"could not read the config.json of {name}: {first_line(e)}", SOURCE_HINTS[source]) from None
    return args["model_name"], args["pretrained_cfg"]


def base_arch(name: str) -> str:
    """The timm architecture a model name stands for: the name, or the one a hub or local model's config.json names
    (what checkpoints record, so that export and bench rebuild the model without the hub)."""
    return _source_config(name.strip())[0] if model_source(name) else name


def create_model(arch: str, num_classes: int, pretrained: bool = False, small_stem: bool = False) -> nn.Module:
    """`timm.create_model` (hub failures as a one-line error), with the small-input stem where asked.

    A hub or local name always brings its weights; timm resets its classifier where the class count differs.
    """
    source = model_source(arch)
    if source:
        base_arch(arch)  # a missing folder or an unreadable config.json is named here
    try:
        model = timm.create_model(arch, pretrained=pretrained or bool(source), num_classes=num_classes)
    except (OSError, RuntimeError, ValueError) as e:
        if not (pretrained or source):
            raise
        raise UserError(
            f"could not load pretrained weights for {arch}: {first_line(e)}",
            SOURCE_HINTS[source]
            if source
            else "connect to the internet (and unset HF_HUB_OFFLINE), or pass --teacher-checkpoint FILE",
        ) from None
    return adapt_small_stem(model, arch) if small_stem else model


def _stem_conv(conv: nn.Conv2d) -> nn.Conv2d:
    return nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=1, padding=1, bias=False)


def adapt_small_stem(model: nn.Module, arch: str) -> nn.Module:
    """The CIFAR-style stem for 32-px inputs: the first conv 3x3 at stride 1 and no max-pool (timm's ImageNet
    stems downsample by 4 before the first block). For the ResNet and the MobileNet/EfficientNet families."""
    if isinstance(model, ResNet):
        if isinstance(model.conv1, nn.Sequential):  # deep stems: only their first conv strides
            model.conv1[0] = _stem_conv(model.conv1[0])
        else:
            model.conv1 = _stem_conv(model.conv1)
        model.maxpool = nn.Identity()
    elif isinstance(model, (MobileNetV3, EfficientNet)):
        model.conv_stem = _stem_conv(model.conv_stem)
    else:
        raise UserError(
            f"--small-stem is not defined for {arch} ({type(model).__name__})",
            "use a ResNet, MobileNet or EfficientNet family model, or drop --small-stem",
        )
    return model


def default_normalization(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std of `arch`'s pretrained config: timm's, or a hub or local model's own (ImageNet's where none)."""
    if model_source(arch):
        pretrained_cfg = _source_config(arch.strip())[1]
    else:
        found = get_pretrained_cfg(arch)
        pretrained_cfg = found.to_dict() if found else {}
    cfg = resolve_data_config(pretrained_cfg=pretrained_cfg)
    return tuple(cfg["mean"]), tuple(cfg["std"])


@dataclass(frozen=True)
class ModelSpec:
    """What it takes to rebuild and feed a model without its recipe."""

    arch: str
    num_classes: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    small_stem: bool = False

    def build(self) -> nn.Module:
        return create_model(self.arch, self.num_classes, small_stem=self.small_stem)


def save_checkpoint(path: Path, model: nn.Module, spec: ModelSpec, stage: str, metrics: dict[str, Any]) -> None:
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    spec_dict = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}
    torch_save(
        {"format": CHECKPOINT_FORMAT, "stage": stage, **spec_dict, "metrics": metrics, "state_dict": state}, path
    )


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as e:
        reason = first_line(e)
        raise UserError(
            f"{path} is not a readable checkpoint ({reason})", "re-create it; it may be truncated"
        ) from None


def _is_gtcompress(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A gtcompress checkpoint as a dict (`torch.load(weights_only=True)`), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found", "pass the path of a .pt file written by gtcompress")
    ckpt = _torch_load(path)
    if not _is_gtcompress(ckpt):
        raise UserError(f"{path} is not a gtcompress checkpoint", "pass a checkpoint written by gtcompress distill")
    return ckpt


def spec_of(ckpt: dict[str, Any]) -> ModelSpec:
    return ModelSpec(
        arch=ckpt["arch"],
        num_classes=ckpt["num_classes"],
        img_size=ckpt["img_size"],
        mean=tuple(ckpt["mean"]),
        std=tuple(ckpt["std"]),
        class_names=tuple(ckpt["class_names"]),
        small_stem=ckpt.get("small_stem", False),
    )


def load_model(path: Path) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Rebuild a model from a gtcompress checkpoint: (model in eval mode, spec, the checkpoint dict)."""
    ckpt = read_checkpoint(path)
    spec = spec_of(ckpt)
    model = spec.build()
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), spec, ckpt


def load_weights(model: nn.Module, path: Path, arch: str, num_classes: int) -> None:
    """Load a gtcompress checkpoint or any timm-compatible state dict (timm's key conventions) into `model`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found", "pass an existing file to --teacher-checkpoint")
    raw = None if path.suffix == ".safetensors" else _torch_load(path)
    if _is_gtcompress(raw):
        if raw["arch"].split(".")[0] != arch.split(".")[0]:
            raise UserError(f"{path} holds a {raw['arch']}, not a {arch}", f"pass --teacher {raw['arch']}")
        state = raw["state_dict"]
    else:
        try:
            state = load_state_dict(str(path), use_ema=True, weights_only=True)
        except (RuntimeError, OSError, KeyError) as e:
            raise UserError(f"{path} is not a readable state dict ({e})", "pass a .pt/.pth/.safetensors file")
    if all(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items()}
    expected = model.state_dict()
    head = f"{model.pretrained_cfg.get('classifier', 'fc')}.weight"
    if head in state and head in expected and state[head].shape[0] != expected[head].shape[0]:
        raise UserError(
            f"{path} has {state[head].shape[0]} classes but the data set has {num_classes}",
            "use a checkpoint trained on this data set, or --pretrained to fine-tune timm's weights",
        )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        raise UserError(
            f"{path} does not fit {arch}: {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(wrong)} mis-shaped tensors (e.g. {first})",
            "pass the --teacher architecture the checkpoint was trained as",
        )
    model.load_state_dict(state)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP (`.module`) or torch.compile (`._orig_mod`) wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in unwrap(model).parameters())


@torch.no_grad()
def count_macs(model: nn.Module, img_size: int) -> int:
    """Multiply-accumulates of one forward pass on one image (torch.utils.flop_counter)."""
    model = unwrap(model)
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, 3, img_size, img_size, device=param.device, dtype=param.dtype))
    model.train(was_training)
    return counter.get_total_flops() // 2
