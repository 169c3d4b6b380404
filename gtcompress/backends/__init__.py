"""Backends: the runtimes a model is evaluated, verified and timed on, one registry entry each.

A backend entry says what it runs (its `Kind`: a checkpoint, the ONNX files every ONNX runtime shares, or an
artefact of its own such as a TensorRT engine), on which devices and at which precisions, which deployment
settings it has (CPU threads, CUDA graphs), why it cannot run here (with the install hint), and, as Polygraphy
separates them, its **loader** (how its own artefact is built from the PyTorch model or an ONNX graph, where it
has one) and its **runner** (how an artefact is opened, with a lifetime: `with spec.open(...) as runner:`
releases it). Export, the latency pre-check, bench, eval, Triton, publish, the report and the CLI's help all read
this registry, and ask a kind, never its name, what a runner takes (the model loaded from a checkpoint, or a
file's path): adding a backend is one entry and one module, `<name>_runner.py`, with `missing`, `open` and, for a
backend with an artefact of its own, `build`.

A runner takes a float32 NCHW batch (numpy, already normalised) and returns float32 logits (N, C). This module
imports no runtime: each entry's module is imported when it is used.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import UserError

Device = Literal["cpu", "cuda"]


class Backend:
    """An opened runner: one model on one backend, device, precision and setting, with a lifetime: used as a
    context manager it releases its runtime's resources (sessions, compiled models, engines, captured graphs)."""

    name: str
    precision: str
    device: str

    def infer(self, x: Any) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class BuildOptions:
    """What an export asks of a backend's own artefact; each loader reads what applies to it."""

    max_batch: int = 32  # the largest batch it must take
    workspace_gib: float = 2.0  # a builder's scratch memory
    opt_batches: tuple[int, ...] = (1, 8, 32)  # batch sizes to tune for
    cache_dir: Path | None = None  # where a build may keep what speeds up the next (TensorRT's timing cache)


@dataclass(frozen=True)
class Kind:
    """A kind of artefact: its name (an export record's `format`), its file suffix, and what a runner of it takes."""

    name: str
    suffix: str
    # a checkpoint: runners take the PyTorch model loaded from it (by models.py, above this package) and run it at
    # any precision they have; else an exported file, made at one precision, which runners open by its path
    model: bool = False


# The kinds that are no backend's own: the PyTorch checkpoint, and the ONNX files every ONNX runtime shares.
CHECKPOINT, ONNX = Kind("checkpoint", ".pt", model=True), Kind("onnx", ".onnx")


@dataclass(frozen=True)
class Loader:
    """A backend's own artefact: its file suffix, what it is built from (the PyTorch model, or the ONNX graph made
    for the backend's `onnx_target`), where it is built and verified, and whether it is tied to that device."""

    suffix: str
    built_from: Literal["model", "onnx"]
    device: Device
    per_device: bool = False  # only runs where it was built (a TensorRT engine): rebuilt there, never shipped


@dataclass(frozen=True)
class Setting:
    """How a deployment runs a backend: its CPU thread count, and whether calls replay a captured CUDA graph."""

    threads: int | None = None  # None: the runtime's own default
    cuda_graph: bool = False

    def label(self) -> str:
        if self.cuda_graph:
            return "CUDA graph"
        return f"{self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else "eager"


@dataclass(frozen=True)
class BackendSpec:
    """One backend: what it runs, where, at which precisions, with which settings, and how its artefact is built
    and opened."""

    name: str
    artefact: str  # the name of its `kind`: checkpoint, onnx, or its own artefact's (its loader's suffix)
    precisions: Mapping[str, tuple[str, ...]]  # device -> the precisions it runs there
    install: str  # how to get it where it is missing
    # device -> what bench times unless told, where that is not everything it runs
    timed_by_default: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    cuda_graph: bool = False  # it can replay calls as captured CUDA graphs
    gaps: Mapping[tuple[str, str], str] = field(default_factory=dict)  # (device, precision) it lacks -> why
    loader: Loader | None = None  # how its own artefact is built (None: it runs a checkpoint or the ONNX files)
    onnx_target: str = "onnxruntime"  # whose ONNX graph it runs or builds from (an int8 graph differs per target)
    triton: str | None = None  # the Triton platform that serves its artefact, if any

    def lacks(self, device: str, precision: str) -> str | None:
        """Why this backend does not run `precision` on `device` (None: it does)."""
        if precision in self.precisions.get(device, ()):
            return None
        runs = ", ".join(self.precisions.get(device, ())) or "nothing"
        return self.gaps.get(
            (device, precision), f"{self.name} on {device} has no precision {precision} (it runs {runs})"
        )

    @property
    def kind(self) -> Kind:
        """What it runs: a checkpoint, the ONNX files, or its own artefact (its loader's suffix)."""
        shared = {k.name: k for k in (CHECKPOINT, ONNX)}
        return shared.get(self.artefact) or Kind(self.artefact, self.loader.suffix)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.precisions)

    @property
    def onnx_verifier(self) -> bool:
        """Whether exported ONNX files are verified on it (on the CPU, where it is installed): every runtime of
        ONNX files is, so that an export a deployment's runtime would misread is rejected."""
        return self.kind == ONNX and "cpu" in self.precisions

    def default_precisions(self, device: str) -> tuple[str, ...]:
        """What bench times on `device` unless told."""
        return self.timed_by_default.get(device, self.precisions.get(device, ()))

    def missing(self, device: str) -> str | None:
        """Why this backend cannot run on `device` here (None: it can)."""
        if device not in self.precisions:
            return f"{self.name} does not run on {device} (it runs on {', '.join(self.devices)})"
        return self._runner().missing(device)

    def build(self, source: Any, dst: Path, precision: str, options: BuildOptions) -> dict[str, Any]:
        """Build this backend's own artefact at `dst` from `source` (the model, or the ONNX file its loader names);
        returns what its export record adds (versions, limits, the device it was built on)."""
        return self._runner().build(source, dst, precision, options)

    def open(self, source: Any, device: str, precision: str, setting: Setting = Setting()) -> Backend:
        """A runner of `source` (the PyTorch model for torch, else the artefact's path); use it in a `with`."""
        lack = self.lacks(device, precision)
        if lack is not None:
            raise UserError(lack, f"choose from {', '.join(self.precisions.get(device, ())) or 'another backend'}")
        self.require(device)
        return self._runner().open(source, device, precision, setting)

    def require(self, device: str) -> None:
        """One line saying why this backend cannot run on `device` here and how to get it (none where it can)."""
        reason = self.missing(device)
        if reason is not None:
            raise UserError(
                f"backend {self.name} cannot run here: {reason}", "" if self.install in reason else self.install
            )

    def _runner(self) -> Any:
        """Its runner module, `<name>_runner` in this package, imported only when a runner is opened."""
        return importlib.import_module(f".{self.name}_runner", __name__)


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        # In the order a report prefers them as its headline: what a deployment would run first.
        BackendSpec(
            "tensorrt",
            "engine",
            {"cuda": ("fp32", "fp16", "int8")},
            "pip install 'gtcompress[trt]' on a machine with an NVIDIA GPU and CUDA",
            cuda_graph=True,
            loader=Loader(".engine", "onnx", "cuda", per_device=True),
            onnx_target="tensorrt",
            triton="tensorrt_plan",
        ),
        BackendSpec(
            "onnxruntime",
            "onnx",
            {"cpu": ("fp32", "fp16", "int8"), "cuda": ("fp32", "fp16")},
            "for CUDA: pip uninstall -y onnxruntime && pip install onnxruntime-gpu (the two cannot coexist)",
            cuda_graph=True,
            gaps={
                ("cuda", "int8"): "onnxruntime's CUDA provider has no int8 kernels for Q/DQ graphs: it would time "
                "dequantized float math, not int8 inference (time int8 on TensorRT or the CPU)"
            },
            triton="onnxruntime_onnx",
        ),
        BackendSpec("openvino", "onnx", {"cpu": ("fp32", "fp16", "int8")}, "pip install 'gtcompress[openvino]'"),
        BackendSpec(
            "torch",
            "checkpoint",
            {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "fp16", "bf16")},
            "torch is a dependency of gtcompress",
            timed_by_default={"cpu": ("fp32",), "cuda": ("fp32", "fp16")},
            cuda_graph=True,
        ),
    )
}
# Every precision some backend runs, in the registry's order.
RUN_PRECISIONS = tuple(dict.fromkeys(p for spec in BACKENDS.values() for ps in spec.precisions.values() for p in ps))


def builders() -> list[BackendSpec]:
    """The backends that build an artefact of their own, in the registry's order."""
    return [spec for spec in BACKENDS.values() if spec.loader is not None]


def backend(name: str) -> BackendSpec:
    """The registry entry `name`, or one line listing the known ones."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend '{name}'", f"choose from {', '.join(BACKENDS)}")
    return BACKENDS[name]


def backend_help() -> str:
    """The backends, for the CLI's help texts."""
    return " | ".join(BACKENDS)


def runs(artefact: str) -> list[BackendSpec]:
    """The backends that run an artefact of this kind, in the registry's order."""
    return [spec for spec in BACKENDS.values() if spec.artefact == artefact]


def artefact_kind(path: Path) -> Kind:
    """What kind of artefact a file is, by its suffix: a checkpoint, an ONNX file, or a backend's own artefact."""
    kinds = {k.suffix: k for k in (CHECKPOINT, ONNX, *(s.kind for s in builders()))}
    kind = kinds.get(Path(path).suffix)
    if kind is None:
        raise UserError(
            f"{Path(path).name} is not a model artefact gtcompress can run", f"pass a {', '.join(kinds)} file"
        )
    return kind


def thread_counts(requested: tuple[int, ...] | Literal["auto"], cores: int | None = None) -> tuple[int, ...]:
    """`auto`: the powers of two up to the machine's cores, and the core count itself."""
    if requested != "auto":
        return requested
    cores = cores or os.cpu_count() or 1
    powers = [2**i for i in range(cores.bit_length()) if 2**i <= cores]
    return tuple(dict.fromkeys([*powers, cores]))


def settings(spec: BackendSpec, device: str, threads: tuple[int, ...], cuda_graph: str) -> list[Setting]:
    """The settings to time `spec` at on `device`: each thread count on the CPU (every CPU runtime here takes
    one), and eager and/or CUDA-graph calls (`cuda_graph` both | on | off) where the backend can capture graphs."""
    if device == "cpu":
        return [Setting(threads=t) for t in threads]
    graph = {"both": (False, True), "on": (True,), "off": (False,)}[cuda_graph] if spec.cuda_graph else (False,)
    return [Setting(cuda_graph=g) for g in graph]


def available(device: str) -> dict[str, str | None]:
    """Every backend's reason it cannot run on `device` here (None where it can)."""
    return {name: spec.missing(device) for name, spec in BACKENDS.items()}
