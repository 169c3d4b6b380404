"""Export: a run's model leaves PyTorch as ONNX (fp32, fp16, int8 Q/DQ) and TensorRT engines, each verified.

Every artefact is written under a temporary name, compared with the PyTorch model on the whole test
split (top-1 agreement, max |delta logits|, accuracy) and renamed into place only if it is within its
precision's tolerance; its record then goes to `metrics.json["export"]`.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import yaml
from pydantic import ValidationError
from rich.table import Table
from torch import nn
from torch.utils.data import Dataset, Subset

from .backends import Backend, OnnxRuntimeBackend, TorchBackend, load_backend
from .config import DataConfig, RunConfig
from .data import Splits, Transformed, build_transform, create_loader, load_splits, loader_workers
from .errors import UserError
from .stages import STAGE_NAMES
from .models import ModelSpec, load_model, read_checkpoint, spec_of
from .rundir import (
    PRECISIONS, RunDir, artefact_name, atomic_path, parse_artefact_name, read_json, resolve_run, write_json,
    write_text,
)

INPUT_NAME, OUTPUT_NAME = "input", "logits"
SIDECAR_FORMAT = "gtcompress-export/1"
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


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
            raise UserError(f"--tolerance {item!r} is not PRECISION.FIELD=VALUE",
                            "e.g. --tolerance int8.min_agreement=90 or --tolerance fp32.max_abs_diff=1e-2")
        try:
            number = None if value.strip().lower() == "none" else float(value)
        except ValueError:
            raise UserError(f"--tolerance {item!r}: {value!r} is not a number", "pass a number or none") from None
        out[precision] = replace(out[precision], **{name: number})
    return out


@dataclass(frozen=True)
class ExportConfig:
    """What `gtcompress export` does: which model, which precisions, where, and how strictly verified."""

    run: Path | None = None  # run directory; None: runs/latest (unless `checkpoint`)
    checkpoint: Path | None = None  # any gtcompress checkpoint instead of a run's model
    model: str = "student"  # which of the run's checkpoints
    precisions: tuple[str, ...] = ("fp32",)  # fp32 is always exported: fp16/int8/engines derive from it
    trt: bool = False  # also TensorRT engines, one per precision
    max_batch: int = 32  # engine profile max (and Triton's max_batch_size)
    workspace_gib: float = 2.0  # TensorRT builder workspace
    calibration_images: int = 256  # training images for int8 calibration
    calibration_method: str = "minmax"  # onnxruntime calibration: minmax | entropy | percentile
    opset: int | None = None  # ONNX opset; None: the exporter's default
    dataset: str | None = None  # data set for verification/calibration; None: the run's
    data_root: Path | None = None
    out: Path | None = None  # where export/ and metrics.json go; None: the run (or the checkpoint's folder)
    triton: Path | None = None  # also write a Triton model repository here
    tolerances: dict[str, Tolerance] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    batch_size: int = 64  # verification batch

    def __post_init__(self) -> None:
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            raise UserError(f"unknown precision '{unknown[0]}'", f"choose from {', '.join(PRECISIONS)}")
        if self.model not in STAGE_NAMES:
            raise UserError(f"unknown model '{self.model}'", f"choose from {', '.join(STAGE_NAMES)}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise UserError(f"unknown calibration method '{self.calibration_method}'",
                            f"choose from {', '.join(CALIBRATION_METHODS)}")
        for name in ("max_batch", "calibration_images", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1", "pass a positive number")
        if self.checkpoint is not None and self.run is not None:
            raise UserError("both a run directory and --checkpoint given", "pass one of them")
        # fp32 first: the other artefacts are converted from it
        object.__setattr__(self, "precisions", tuple(p for p in PRECISIONS if p in {"fp32", *self.precisions}))


@dataclass(frozen=True)
class Source:
    """The model to export, the data to verify it on, and where the results go."""

    name: str  # artefact stem: student, generous_teacher, ... (or the checkpoint's file stem)
    checkpoint: Path
    base: Path  # export/ and metrics.json live here
    data: DataConfig


@dataclass(frozen=True)
class EvalData:
    """The test split (and training split, for calibration) under the model's eval transform."""

    test: Dataset
    train: Dataset
    labels: np.ndarray
    transform: Callable
    description: str
    workers: int


def _run_of(path: Path) -> Path | None:
    """The run directory holding `path` (a checkpoint in it, or an artefact in its export/), if any."""
    for parent in (path.parent, path.parent.parent):
        if (parent / "config.yaml").is_file():
            return parent
    return None


def _run_data(run: Path) -> DataConfig:
    try:
        return RunConfig.model_validate(yaml.safe_load((run / "config.yaml").read_text())).data
    except (yaml.YAMLError, ValidationError) as e:  # a hand-edited or foreign config.yaml
        reason = str(e).strip().splitlines()[0]
        raise UserError(f"{run / 'config.yaml'} is not a gtcompress run configuration ({reason})",
                        "pass --dataset NAME to name the data set instead") from None


def _data_config(run: Path | None, dataset: str | None, data_root: Path | None, what: str) -> DataConfig:
    """The run's data configuration with --dataset/--data-root applied; --dataset is needed without a run."""
    if run is None and dataset is None:
        raise UserError(f"{what} is not inside a gtcompress run, so the data set is unknown",
                        "pass --dataset NAME (and --data-root DIR) to verify on its test split")
    data = _run_data(run) if run is not None else DataConfig()
    updates = {k: v for k, v in {"name": dataset, "root": data_root}.items() if v is not None}
    return data.model_copy(update=updates) if updates else data


def resolve_source(cfg: ExportConfig) -> Source:
    """Which checkpoint to export and where: a run's `<model>.pt`, or `--checkpoint FILE`."""
    if cfg.checkpoint is not None:
        ckpt = Path(cfg.checkpoint)
        if not ckpt.is_file():
            raise UserError(f"checkpoint {ckpt} not found", "pass the path of a .pt file written by gtcompress")
        run = ckpt.parent if (ckpt.parent / "config.yaml").is_file() else None
        data = _data_config(run, cfg.dataset, cfg.data_root, str(ckpt))
        # dots would read as a precision in the artefact names (`my.model.onnx`)
        return Source(ckpt.stem.replace(".", "_"), ckpt.resolve(), Path(cfg.out or ckpt.parent).resolve(), data)
    run = resolve_run(cfg.run)
    ckpt = run.checkpoint(cfg.model)
    if not ckpt.is_file():
        hint = ("finish it with `gtcompress distill --resume --out RUN`" if cfg.model == "student"
                else "pick another --model")
        raise UserError(f"{run.path} has no {ckpt.name} (the {cfg.model} stage did not finish)", hint)
    data = _data_config(run.path, cfg.dataset, cfg.data_root, str(run.path))
    return Source(cfg.model, ckpt, Path(cfg.out or run.path).resolve(), data)


def load_eval_data(data_cfg: DataConfig, spec: ModelSpec) -> EvalData:
    """The data set's splits under the checkpoint's eval transform (its img_size, mean, std)."""
    splits: Splits = load_splits(data_cfg)
    if splits.num_classes != spec.num_classes:
        raise UserError(f"the model has {spec.num_classes} classes but {data_cfg.name} has {splits.num_classes}",
                        "pass the --dataset the model was trained on")
    transform = build_transform(data_cfg, splits, spec.img_size, spec.mean, spec.std, training=False)
    labels = np.asarray(_targets(splits.val), dtype=np.int64)
    workers = loader_workers(data_cfg, splits)
    return EvalData(Transformed(splits.val, transform), Transformed(splits.train, transform), labels, transform,
                    f"{len(labels)} {data_cfg.name} test images", workers)


def _targets(dataset: Dataset) -> list[int]:
    """Labels of a data set without decoding its images (where it keeps them apart)."""
    if isinstance(dataset, Subset):
        inner = _targets(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    targets = getattr(dataset, "targets", None)
    return list(targets) if targets is not None else [dataset[i][1] for i in range(len(dataset))]


def batches(dataset: Dataset, batch_size: int, workers: int = 0) -> Iterator[np.ndarray]:
    """Float32 NCHW batches of a transformed data set, in order."""
    for x, _ in create_loader(dataset, batch_size, training=False, workers=workers):
        yield x.numpy()


def predict(backend: Backend, data: EvalData, batch_size: int) -> np.ndarray:
    """Logits of `backend` on the whole test split, (N, C) float32."""
    return np.concatenate([backend.run(x) for x in batches(data.test, batch_size, data.workers)])


def compare(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Accuracy of `logits` and how closely they follow the PyTorch `reference` (percent, max |delta|)."""
    finite = bool(np.isfinite(logits).all())
    top1 = logits.argmax(1)
    return {
        "top1": float(100 * (top1 == labels).mean()),
        "top1_agreement": float(100 * (top1 == reference.argmax(1)).mean()),
        "max_abs_diff": float(np.abs(logits - reference).max()) if finite else float("inf"),
        "finite": finite,
    }


def tolerance_failure(stats: dict[str, Any], tol: Tolerance) -> str | None:
    """Why `stats` fail `tol`, or None when they pass."""
    if not stats["finite"]:
        return "its logits contain NaN or Inf"
    if tol.max_abs_diff is not None and stats["max_abs_diff"] > tol.max_abs_diff:
        return f"max |delta logits| {stats['max_abs_diff']:.3g} > {tol.max_abs_diff:g}"
    if stats["top1_agreement"] < tol.min_agreement:
        return f"top-1 agreement {stats['top1_agreement']:.2f}% < {tol.min_agreement:g}%"
    return None


def export_onnx(model: nn.Module, img_size: int, path: Path, opset: int | None = None) -> int:
    """`torch.onnx.export(dynamo=True)` into one self-contained file with a dynamic batch; returns the opset."""
    model = model.eval().to(memory_format=torch.contiguous_format)
    # Traced with batch 2: a batch of 1 would be specialised into the graph as a constant.
    example = torch.randn(2, 3, img_size, img_size)
    batch = torch.export.Dim("batch", min=1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), str(path), dynamo=True, external_data=False, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), opset_version=opset, verbose=False,
            )
    except torch.onnx.errors.OnnxExporterError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"torch.onnx could not export the model: {reason}",
                        "try another --opset; `gtcompress --debug export` shows the exporter's traceback") from None
    strip_debug_metadata(path)
    onnx.checker.check_model(str(path), full_check=True)
    return graph_opset(path)


def strip_debug_metadata(path: Path) -> None:
    """Drop the exporter's per-node debugging metadata (Python stack traces with this machine's paths).

    The graph is unchanged; the file loses ~3% (fp32) to ~11% (int8) of its size and no longer
    carries the exporting machine's source paths.
    """
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(model, str(path))


def graph_opset(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute with fp32 inputs/outputs (onnxconverter-common)."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        # it warns for every constant below fp16's range that it clamps, as designed
        warnings.simplefilter("ignore")
        converted = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.checker.check_model(converted, full_check=True)
    onnx.save(converted, str(dst))


def quantize_int8(src: Path, dst: Path, calibration: Callable[[], Iterator[np.ndarray]], method: str) -> None:
    """Static int8 Q/DQ quantization (onnxruntime): per-channel weights, activations from calibration.

    The graph keeps to what TensorRT's explicit quantization accepts, so the same file runs on
    onnxruntime CPU and builds an int8 engine: symmetric signed int8 activations and weights, and
    float biases (TensorRT rejects a DequantizeLinear of int32; both runtimes fold the bias themselves).
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = calibration()

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.batches, None)
            return None if x is None else {INPUT_NAME: x}

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory(prefix="gtcompress-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference only: onnxruntime's optimiser would split HardSwish into HardSigmoid * x, which
        # with symmetric int8 activations runs ~6x slower on onnxruntime CPU (measured on MobileNetV3).
        quant_pre_process(str(src), str(prepared), skip_optimization=True)
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
            quantize_static(
                str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=methods[method],
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
            )
    onnx.checker.check_model(str(dst), full_check=True)


def calibration_indices(n_train: int, n: int, seed: int = 0) -> np.ndarray:
    """A fixed random sample of `n` training images (all of them when there are fewer)."""
    return np.sort(np.random.default_rng(seed).permutation(n_train)[:n])


def describe_transform(transform: Callable) -> dict[str, Any]:
    """The eval transform's geometry as the deploy scripts replay it: resize the short side, centre-crop.

    (Then scale to [0, 1] and normalise with the checkpoint's mean/std, as timm's eval transform does.)
    """
    from torchvision import transforms as T

    out: dict[str, Any] = {}
    for step in transform.transforms:
        if isinstance(step, T.Resize) and (isinstance(step.size, int) or len(step.size) == 1):
            out["resize"] = step.size if isinstance(step.size, int) else step.size[0]
            out["interpolation"] = step.interpolation.value
        elif isinstance(step, T.CenterCrop):
            out["crop"] = list(step.size)
        elif type(step).__name__ not in ("MaybeToTensor", "ToTensor", "Normalize"):
            raise ValueError(f"the deploy scripts cannot replay the transform step {step}")
    return out


def sidecar_path(artefact: Path) -> Path:
    """`<model>.json` beside an artefact: what the deploy scripts and `gtcompress eval` read."""
    return artefact.parent / f"{parse_artefact_name(artefact)[0]}.json"


def read_sidecar(artefact: Path) -> dict[str, Any]:
    path = sidecar_path(artefact)
    if not path.is_file():
        raise UserError(f"no {path.name} beside {artefact.name}", "re-run gtcompress export, which writes it")
    meta = read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise UserError(f"{path} is not a gtcompress export description", "re-run gtcompress export")
    return meta


def sidecar(spec: ModelSpec, transform: Callable, opset: int, source: Path) -> dict[str, Any]:
    """Everything needed to feed the exported graph without gtcompress (see README, Export)."""
    return {
        "format": SIDECAR_FORMAT, "arch": spec.arch, "num_classes": spec.num_classes, "img_size": spec.img_size,
        **describe_transform(transform), "mean": list(spec.mean), "std": list(spec.std),
        "class_names": list(spec.class_names), "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME, "input_shape": ["batch", 3, spec.img_size, spec.img_size], "layout": "NCHW",
        "opset": opset, "dynamic_batch": True, "checkpoint": source.name,
    }


def _writable(directory: Path) -> None:
    """Fail early, before minutes of work, where `directory` cannot be created or written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".gtcompress-write-test-"):
            pass
    except OSError as e:
        raise UserError(f"cannot write to {directory} ({e.strerror or e})", "choose a writable directory") from None


class Exporter:
    """One `gtcompress export`: the artefacts of one model, verified against its PyTorch self."""

    def __init__(self, cfg: ExportConfig, say: Callable[[str], None]):
        self.cfg, self.say = cfg, say
        self.source = resolve_source(cfg)
        self.model, self.spec, _ = load_model(self.source.checkpoint)
        self.export_dir = self.source.base / "export"
        for directory in (*([cfg.triton] if cfg.triton else []), self.source.base, self.export_dir):
            _writable(Path(directory))
        self.data = load_eval_data(self.source.data, self.spec)
        self.records: list[dict[str, Any]] = []
        self.reference: np.ndarray | None = None
        self.reference_top1 = 0.0

    def path(self, precision: str, fmt: str) -> Path:
        return self.export_dir / artefact_name(self.source.name, precision, fmt)

    def run(self) -> list[dict[str, Any]]:
        """ONNX artefacts, then (with --trt) engines; the Triton repository gets whatever was verified."""
        try:
            self.onnx_artefacts()
            if self.cfg.trt:
                self.engines()
        finally:
            if self.cfg.triton is not None and self.records:
                write_triton_repository(Path(self.cfg.triton), self.records, self.source.base,
                                        read_sidecar(self.path("fp32", "onnx")), self.cfg.max_batch)
                self.say(f"Triton model repository: {self.cfg.triton}")
        return self.records

    def onnx_artefacts(self) -> None:
        fp32 = self.path("fp32", "onnx")
        with atomic_path(fp32) as tmp:
            start = time.perf_counter()
            opset = export_onnx(self.model, self.spec.img_size, tmp, self.cfg.opset)
            seconds = time.perf_counter() - start
            self.reference = predict(TorchBackend(self.model, "cpu", "fp32"), self.data, self.cfg.batch_size)
            self.reference_top1 = float(100 * (self.reference.argmax(1) == self.data.labels).mean())
            record = self.verify(OnnxRuntimeBackend(tmp, "cpu", "fp32"), fp32, tmp, "fp32", seconds, opset=opset)
        self.keep(record)
        write_json(sidecar_path(fp32), sidecar(self.spec, self.data.transform, opset, self.source.checkpoint))
        convert = {"fp16": convert_fp16, "int8": self.quantize}
        for precision in self.cfg.precisions[1:]:
            path = self.path(precision, "onnx")
            with atomic_path(path) as tmp:
                start = time.perf_counter()
                convert[precision](fp32, tmp)
                seconds = time.perf_counter() - start
                extra = ({"calibration_images": min(self.cfg.calibration_images, len(self.data.train)),
                          "calibration_method": self.cfg.calibration_method} if precision == "int8" else {})
                record = self.verify(OnnxRuntimeBackend(tmp, "cpu", precision), path, tmp, precision, seconds,
                                     opset=graph_opset(tmp), **extra)
            self.keep(record)

    def quantize(self, src: Path, dst: Path) -> None:
        indices = calibration_indices(len(self.data.train), self.cfg.calibration_images).tolist()
        subset = Subset(self.data.train, indices)
        quantize_int8(src, dst, lambda: batches(subset, 32, self.data.workers), self.cfg.calibration_method)

    def engines(self) -> None:
        from .backends import TensorRTBackend
        from .tensorrt import EngineConfig, build_engine, require_tensorrt

        require_tensorrt()
        engine_cfg = EngineConfig(max_batch=self.cfg.max_batch, workspace_gib=self.cfg.workspace_gib)
        for precision in self.cfg.precisions:
            path = self.path(precision, "engine")
            with atomic_path(path) as tmp:
                start = time.perf_counter()
                version = build_engine(self.path(precision, "onnx"), tmp, engine_cfg,
                                       timing_cache=self.export_dir / "timing.cache")
                seconds = time.perf_counter() - start
                record = self.verify(TensorRTBackend(tmp, precision), path, tmp, precision, seconds,
                                     max_batch=self.cfg.max_batch, tensorrt=version, gpu=torch.cuda.get_device_name())
            self.keep(record)

    def verify(self, backend: Backend, final: Path, tmp: Path, precision: str, seconds: float,
               **extra: Any) -> dict[str, Any]:
        """Compare `backend` (running `tmp`) with PyTorch: the record of `final`, or a UserError."""
        stats = compare(predict(backend, self.data, self.cfg.batch_size), self.reference, self.data.labels)
        failure = tolerance_failure(stats, self.cfg.tolerances[precision])
        if failure:
            key = "max_abs_diff" if "delta" in failure else "min_agreement"
            fix = ("try more --calibration-images or --calibration-method entropy" if precision == "int8"
                   else "try another --opset")
            raise UserError(f"{final.name} failed verification against PyTorch on {self.data.description}: {failure}",
                            f"{fix}, or accept it with --tolerance {precision}.{key}=VALUE")
        fmt = "onnx" if final.suffix == ".onnx" else "engine"
        record = {
            "model": self.source.name, "format": fmt, "backend": backend.name, "precision": precision,
            "path": os.path.relpath(final, self.source.base), "bytes": tmp.stat().st_size, "top1": stats["top1"],
            "reference_top1": self.reference_top1, "top1_agreement": stats["top1_agreement"],
            "max_abs_diff": stats["max_abs_diff"], "export_seconds": seconds, "test_images": len(self.data.labels),
            **extra,
        }
        return record

    def keep(self, record: dict[str, Any]) -> None:
        """The artefact is in place and verified: record it in metrics.json (replacing its earlier record)."""
        self.records.append(record)
        run = RunDir(self.source.base)
        others = [r for r in run.metrics().get("export", []) if r.get("path") != record["path"]]
        run.update_metrics("export", others + [record])
        self.say(f"verified {record['path']}: top-1 {record['top1']:.2f}% (PyTorch {record['reference_top1']:.2f}%), "
                 f"agreement {record['top1_agreement']:.2f}%, max |delta| {record['max_abs_diff']:.2g}, "
                 f"{record['bytes'] / 1e6:.2f} MB")


def is_up_to_date(cfg: ExportConfig) -> bool:
    """Whether every artefact `cfg` asks for is verified in metrics.json and newer than its checkpoint."""
    source = resolve_source(cfg)
    recorded = {r["path"] for r in RunDir(source.base).metrics().get("export", [])}
    fmts = ("onnx", "engine") if cfg.trt else ("onnx",)
    paths = [Path("export") / artefact_name(source.name, p, f) for p in cfg.precisions for f in fmts]
    return all(str(p) in recorded and (source.base / p).is_file()
               and (source.base / p).stat().st_mtime >= source.checkpoint.stat().st_mtime for p in paths)


def run_export(cfg: ExportConfig, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Export, verify and record the configured artefacts; returns their metrics records."""
    return Exporter(cfg, say).run()


def triton_config(name: str, platform: str, meta: dict[str, Any], max_batch: int) -> str:
    """A Triton `config.pbtxt`: fp32 NCHW in, logits out (labelled), dynamic batching up to `max_batch`."""
    dims = ", ".join(str(d) for d in meta["input_shape"][1:])
    gpu = platform == "tensorrt_plan"
    instance = "instance_group [\n  {\n    kind: KIND_GPU\n    count: 1\n  }\n]\n" if gpu else ""
    return (
        f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch}\n'
        f'input [\n  {{\n    name: "{meta["input_name"]}"\n    data_type: TYPE_FP32\n    dims: [ {dims} ]\n  }}\n]\n'
        f'output [\n  {{\n    name: "{meta["output_name"]}"\n    data_type: TYPE_FP32\n'
        f'    dims: [ {meta["num_classes"]} ]\n    label_filename: "labels.txt"\n  }}\n]\n'
        f"dynamic_batching {{\n  max_queue_delay_microseconds: 100\n}}\n{instance}"
    )


def triton_model_name(record: dict[str, Any]) -> str:
    return f"{record['model']}_{'onnx' if record['format'] == 'onnx' else 'trt'}_{record['precision']}"


def write_triton_repository(root: Path, records: list[dict[str, Any]], base: Path, meta: dict[str, Any],
                            max_batch: int) -> list[str]:
    """One Triton model per verified artefact: `<root>/<name>/{config.pbtxt, labels.txt, 1/model.onnx|plan}`."""
    names = []
    for record in records:
        name = triton_model_name(record)
        onnx_model = record["format"] == "onnx"
        directory = root / name
        with atomic_path(directory / "1" / ("model.onnx" if onnx_model else "model.plan")) as tmp:
            shutil.copyfile(base / record["path"], tmp)
        write_text(directory / "labels.txt", "".join(f"{c}\n" for c in meta["class_names"]))
        write_text(directory / "config.pbtxt",
                   triton_config(name, "onnxruntime_onnx" if onnx_model else "tensorrt_plan", meta, max_batch))
        names.append(name)
    return names


def artefact_table(records: list[dict[str, Any]]) -> Table:
    """The verified artefacts: size, accuracy, agreement with PyTorch, export time."""
    table = Table(title="gtcompress export (verified against PyTorch on the test split)", title_justify="left")
    for col in ("artefact", "backend", "precision", "MB", "top-1 %", "PyTorch %", "agree %", "max |Δ|", "export s"):
        table.add_column(col, justify="left" if col in ("artefact", "backend", "precision") else "right")
    for r in records:
        table.add_row(r["path"], r["backend"], r["precision"], f"{r['bytes'] / 1e6:.2f}", f"{r['top1']:.2f}",
                      f"{r['reference_top1']:.2f}", f"{r['top1_agreement']:.2f}", f"{r['max_abs_diff']:.2g}",
                      f"{r['export_seconds']:.1f}")
    return table


def evaluate_artefact(path: Path, dataset: str | None = None, data_root: Path | None = None, device: str = "cpu",
                      batch_size: int = 64) -> dict[str, Any]:
    """Test-split top-1 of a .pt, .onnx or .engine file; the data set is its run's unless given."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found", "pass a .pt, .onnx or .engine file")
    if path.suffix not in (".pt", ".onnx", ".engine"):
        raise UserError(f"{path.name} is not a model artefact gtcompress can run", "pass a .pt, .onnx or .engine file")
    if path.suffix == ".pt":
        spec = spec_of(read_checkpoint(path))
    else:
        meta = read_sidecar(path)
        spec = ModelSpec(meta["arch"], meta["num_classes"], meta["img_size"], tuple(meta["mean"]),
                         tuple(meta["std"]), tuple(meta["class_names"]))
    data = load_eval_data(_data_config(_run_of(path), dataset, data_root, path.name), spec)
    backend = load_backend(path, device=device)
    logits = predict(backend, data, batch_size)
    top1 = logits.argmax(1)
    k = min(5, spec.num_classes)
    topk = np.argsort(-logits, axis=1)[:, :k]
    return {
        "path": str(path), "backend": backend.name, "precision": backend.precision, "images": len(data.labels),
        "top1": float(100 * (top1 == data.labels).mean()),
        f"top{k}": float(100 * (topk == data.labels[:, None]).any(1).mean()), "data": data.description,
    }
