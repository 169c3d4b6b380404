"""Backends: the runtimes a model is evaluated, verified and timed on, one registry entry each.

A backend entry says what it runs (a checkpoint, an ONNX file or a TensorRT engine), on which devices and at
which precisions, which deployment settings it has (CPU threads, CUDA graphs), why it cannot run here (with
the install hint) and how to open a runner. bench, candidates, eval, export verification, the latency budget,
the report and the CLI's help all read this registry: adding a backend is one entry and its runner module.

A runner takes a float32 NCHW batch (numpy, already normalised) and returns float32 logits (N, C). This module
imports no runtime: each entry's runner module is imported when it is opened.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from ..errors import UserError

Device = Literal["cpu", "cuda"]
Artefact = Literal["checkpoint", "onnx", "engine"]


class Backend(Protocol):
    """An opened runner: one model on one backend, device, precision and setting."""

    name: str
    precision: str
    device: str

    def infer(self, x: Any) -> Any: ...


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
    """One backend: what it runs, where, at which precisions, with which settings, and how it is opened."""

    name: str
    artefact: Artefact  # what it runs: a gtcompress checkpoint, an exported ONNX file, a TensorRT engine
    precisions: Mapping[str, tuple[str, ...]]  # device -> the precisions it runs there
    install: str  # how to get it where it is missing
    # device -> what bench times unless told, where that is not everything it runs
    timed_by_default: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    cuda_graph: bool = False  # it can replay calls as captured CUDA graphs
    gaps: Mapping[tuple[str, str], str] = field(default_factory=dict)  # (device, precision) it lacks -> why

    def lacks(self, device: str, precision: str) -> str | None:
        """Why this backend does not run `precision` on `device` (None: it does)."""
        if precision in self.precisions.get(device, ()):
            return None
        runs = ", ".join(self.precisions.get(device, ())) or "nothing"
        return self.gaps.get(
            (device, precision), f"{self.name} on {device} has no precision {precision} (it runs {runs})"
        )

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.precisions)

    @property
    def onnx_verifier(self) -> bool:
        """Whether exported ONNX files are verified on it (on the CPU, where it is installed): every runtime of
        ONNX files is, so that an export a deployment's runtime would misread is rejected."""
        return self.artefact == "onnx" and "cpu" in self.precisions

    @property
    def onnx_target(self) -> str:
        """Whose ONNX graph its artefact comes from: TensorRT's for an engine, else onnxruntime's (OpenVINO runs it)."""
        return "tensorrt" if self.artefact == "engine" else "onnxruntime"

    def default_precisions(self, device: str) -> tuple[str, ...]:
        """What bench times on `device` unless told."""
        return self.timed_by_default.get(device, self.precisions.get(device, ()))

    def missing(self, device: str) -> str | None:
        """Why this backend cannot run on `device` here (None: it can)."""
        if device not in self.precisions:
            return f"{self.name} does not run on {device} (it runs on {', '.join(self.devices)})"
        return self._runner().missing(device)

    def open(self, source: Any, device: str, precision: str, setting: Setting = Setting()) -> Backend:
        """A runner of `source` (a model or checkpoint for torch, else the artefact's path)."""
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
ARTEFACT_SUFFIX: dict[str, Artefact] = {".pt": "checkpoint", ".onnx": "onnx", ".engine": "engine"}
# Every precision some backend runs, in the registry's order.
RUN_PRECISIONS = tuple(dict.fromkeys(p for spec in BACKENDS.values() for ps in spec.precisions.values() for p in ps))


def backend(name: str) -> BackendSpec:
    """The registry entry `name`, or one line listing the known ones."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend '{name}'", f"choose from {', '.join(BACKENDS)}")
    return BACKENDS[name]


def backend_help() -> str:
    """The backends, for the CLI's help texts."""
    return " | ".join(BACKENDS)


def runs(artefact: Artefact) -> list[BackendSpec]:
    """The backends that run an artefact of this kind, in the registry's order."""
    return [spec for spec in BACKENDS.values() if spec.artefact == artefact]


def artefact_kind(path: Path) -> Artefact:
    """What kind of artefact a file is, by its suffix (.pt, .onnx, .engine)."""
    kind = ARTEFACT_SUFFIX.get(Path(path).suffix)
    if kind is None:
        raise UserError(
            f"{Path(path).name} is not a model artefact gtcompress can run", "pass a .pt, .onnx or .engine file"
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


def load_backend(path: Path, device: str = "cpu", name: str | None = None, precision: str | None = None) -> Backend:
    """A runner for an artefact file: on backend `name`, else the first in the registry that runs its kind."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found", "pass a .pt, .onnx or .engine file")
    kind = artefact_kind(path)
    spec = backend(name) if name else runs(kind)[0]
    if spec.artefact != kind:
        able = ", ".join(s.name for s in runs(kind))
        raise UserError(f"backend {spec.name} does not run {path.name}", f"{kind} files run on {able}")
    return spec.open(path, device, precision or spec.precisions.get(device, ("fp32",))[0])


def available(device: str) -> dict[str, str | None]:
    """Every backend's reason it cannot run on `device` here (None where it can)."""
    return {name: spec.missing(device) for name, spec in BACKENDS.items()}
