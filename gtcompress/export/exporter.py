"""Export: a run's model leaves PyTorch as ONNX (fp32, fp16, int8 Q/DQ) and TensorRT engines, each verified.

Every artefact is written under a temporary name, compared with the PyTorch model on the whole test
split (top-1 agreement, max |delta logits|, accuracy) and renamed into place only if it is within its
precision's tolerance; its record then goes to `metrics.json["export"]`.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table
from torch.utils.data import Dataset, IterableDataset, Subset

from ..backends import Backend, OnnxRuntimeBackend, TorchBackend
from ..errors import UserError, VerificationError
from ..models import load_model
from ..rundir import RunDir, artefact_name, atomic_path, write_json
from .config import ExportConfig
from .graph import calibration_indices, convert_fp16, export_onnx, graph_opset, quantize_int8
from .sidecar import read_sidecar, sidecar, sidecar_path
from .source import load_eval_data, resolve_source
from .triton import write_triton_repository
from .verify import agreement, batches, predict, tolerance_failure


def _writable(directory: Path) -> None:
    """Fail early, before minutes of work, where `directory` cannot be created or written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".gtcompress-write-test-"):
            pass
    except OSError as e:
        raise UserError(f"cannot write to {directory} ({e.strerror or e})", "choose a writable directory") from None


def calibration_set(train: Dataset, n: int) -> Dataset:
    """A fixed random sample of `n` training images; of a stream, its first `n` (shards are in random order)."""
    if isinstance(train, IterableDataset):
        return list(islice(train, n))
    return Subset(train, calibration_indices(len(train), n).tolist())


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

    def export_all(self) -> list[dict[str, Any]]:
        """ONNX artefacts, then (with --trt) engines; the Triton repository gets whatever was verified."""
        try:
            self.onnx_artefacts()
            if self.cfg.trt:
                self.engines()
        finally:
            if self.cfg.triton is not None and self.records:
                write_triton_repository(
                    Path(self.cfg.triton),
                    self.records,
                    self.source.base,
                    read_sidecar(self.path("fp32", "onnx")),
                    self.cfg.max_batch,
                )
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
        for precision in self.cfg.precisions[1:]:
            self.lenient(lambda p=precision: self.converted(p, fp32, "onnxruntime"))
        if self.cfg.trt and "int8" in self.cfg.precisions:
            self.lenient(lambda: self.converted("int8", fp32, "tensorrt"))

    def lenient(self, make: Callable[[], None]) -> None:
        """Make a reduced-precision artefact; with keep_going, one that fails verification is reported (in
        metrics.json's `export_rejected`) and the others go on."""
        try:
            make()
        except VerificationError as e:
            if not self.cfg.keep_going:
                raise
            run = RunDir(self.source.base)
            rejected = [r for r in run.metrics().get("export_rejected", []) if r["path"] != e.path]
            record = {"path": e.path, "reason": e.message, "checkpoint_mtime": self.source.checkpoint.stat().st_mtime}
            run.update_metrics("export_rejected", [*rejected, record])
            self.say(f"not kept: {e.message}")

    def converted(self, precision: str, fp32: Path, target: str) -> None:
        """Convert the fp32 file to `precision` for `target`, verify it on the test split and keep it."""
        path = self.export_dir / artefact_name(self.source.name, precision, "onnx", target)
        with atomic_path(path) as tmp:
            start = time.perf_counter()
            if precision == "fp16":
                convert_fp16(fp32, tmp)
            else:
                subset = calibration_set(self.data.train, self.cfg.calibration_images)
                quantize_int8(
                    fp32, tmp, lambda: batches(subset, 32, self.data.workers), self.cfg.calibration_method, target
                )
            seconds = time.perf_counter() - start
            extra = (
                {"target": target, "calibration_images": len(subset), "calibration_method": self.cfg.calibration_method}
                if precision == "int8"
                else {}
            )
            record = self.verify(
                OnnxRuntimeBackend(tmp, "cpu", precision),
                path,
                tmp,
                precision,
                seconds,
                opset=graph_opset(tmp),
                **extra,
            )
        self.keep(record)

    def engines(self) -> None:
        from ..tensorrt import EngineConfig, require_tensorrt

        require_tensorrt()
        engine_cfg = EngineConfig(self.cfg.max_batch, self.cfg.workspace_gib, self.cfg.opt_batches)
        for precision in self.cfg.precisions:
            source = self.export_dir / artefact_name(self.source.name, precision, "onnx", "tensorrt")
            if source.is_file():  # a reduced precision whose ONNX file was not kept has no engine either
                self.lenient(lambda p=precision, src=source: self.engine(p, src, engine_cfg))

    def engine(self, precision: str, source: Path, engine_cfg: Any) -> None:
        """Build the engine of one precision from its ONNX file, verify it and keep it."""
        from ..backends import TensorRTBackend
        from ..tensorrt import build_engine

        path = self.path(precision, "engine")
        with atomic_path(path) as tmp:
            start = time.perf_counter()
            version, cache = build_engine(source, tmp, engine_cfg, timing_cache=self.export_dir / "timing.cache")
            seconds = time.perf_counter() - start
            record = self.verify(
                TensorRTBackend(tmp, precision),
                path,
                tmp,
                precision,
                seconds,
                max_batch=self.cfg.max_batch,
                profiles=engine_cfg.profiles(),
                tensorrt=version,
                timing_cache=cache,
                gpu=torch.cuda.get_device_name(),
            )
        self.keep(record)

    def verify(
        self, backend: Backend, final: Path, tmp: Path, precision: str, seconds: float, **extra: Any
    ) -> dict[str, Any]:
        """Compare `backend` (running `tmp`) with PyTorch: the record of `final`, or a UserError."""
        stats = agreement(predict(backend, self.data, self.cfg.batch_size), self.reference, self.data.labels)
        failure = tolerance_failure(stats, self.cfg.tolerances[precision])
        if failure:
            key = "max_abs_diff" if "delta" in failure else "min_agreement"
            fix = (
                "try more --calibration-images or --calibration-method entropy"
                if precision == "int8"
                else "try another --opset"
            )
            error = VerificationError(
                f"{final.name} failed verification against PyTorch on {self.data.description}: {failure}",
                f"{fix}, or accept it with --tolerance {precision}.{key}=VALUE",
            )
            error.path = os.path.relpath(final, self.source.base)
            raise error
        fmt = "onnx" if final.suffix == ".onnx" else "engine"
        record = {
            "model": self.source.name,
            "format": fmt,
            "backend": backend.name,
            "precision": precision,
            "path": os.path.relpath(final, self.source.base),
            "bytes": tmp.stat().st_size,
            "top1": stats["top1"],
            "reference_top1": self.reference_top1,
            "top1_agreement": stats["top1_agreement"],
            "max_abs_diff": stats["max_abs_diff"],
            "export_seconds": seconds,
            "test_images": len(self.data.labels),
            **extra,
        }
        return record

    def keep(self, record: dict[str, Any]) -> None:
        """The artefact is in place and verified: record it in metrics.json (replacing its earlier record)."""
        self.records.append(record)
        run = RunDir(self.source.base)
        others = [r for r in run.metrics().get("export", []) if r.get("path") != record["path"]]
        run.update_metrics("export", others + [record])
        rejected = run.metrics().get("export_rejected", [])
        if any(r["path"] == record["path"] for r in rejected):
            run.update_metrics("export_rejected", [r for r in rejected if r["path"] != record["path"]])
        self.say(
            f"verified {record['path']}: top-1 {record['top1']:.2f}% (PyTorch {record['reference_top1']:.2f}%), "
            f"agreement {record['top1_agreement']:.2f}%, max |delta| {record['max_abs_diff']:.2g}, "
            f"{record['bytes'] / 1e6:.2f} MB"
        )


def is_up_to_date(cfg: ExportConfig) -> bool:
    """Whether every artefact `cfg` asks for is verified in metrics.json and newer than its checkpoint (with
    keep_going, one rejected by verification counts as done: trying it again would fail again)."""
    source = resolve_source(cfg)
    metrics = RunDir(source.base).metrics()
    recorded = {r["path"] for r in metrics.get("export", [])}
    trained = source.checkpoint.stat().st_mtime
    rejected = {r["path"] for r in metrics.get("export_rejected", []) if r["checkpoint_mtime"] >= trained}
    rejected = rejected if cfg.keep_going else set()
    names = {artefact_name(source.name, p, "onnx") for p in cfg.precisions}
    if cfg.trt:
        names |= {artefact_name(source.name, p, f, "tensorrt") for p in cfg.precisions for f in ("onnx", "engine")}
    paths = [Path("export") / name for name in sorted(names)]
    return all(
        str(p) in rejected
        or (
            str(p) in recorded
            and (source.base / p).is_file()
            and (source.base / p).stat().st_mtime >= source.checkpoint.stat().st_mtime
        )
        for p in paths
    )


def run_export(cfg: ExportConfig, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Export, verify and record the configured artefacts; returns their metrics records."""
    return Exporter(cfg, say).export_all()


def artefact_table(records: list[dict[str, Any]]) -> Table:
    """The verified artefacts: size, accuracy, agreement with PyTorch, export time."""
    table = Table(title="gtcompress export (verified against PyTorch on the test split)", title_justify="left")
    for col in ("artefact", "backend", "precision", "MB", "top-1 %", "PyTorch %", "agree %", "max |Δ|", "export s"):
        table.add_column(col, justify="left" if col in ("artefact", "backend", "precision") else "right")
    for r in records:
        table.add_row(
            r["path"],
            r["backend"],
            r["precision"],
            f"{r['bytes'] / 1e6:.2f}",
            f"{r['top1']:.2f}",
            f"{r['reference_top1']:.2f}",
            f"{r['top1_agreement']:.2f}",
            f"{r['max_abs_diff']:.2g}",
            f"{r['export_seconds']:.1f}",
        )
    return table
