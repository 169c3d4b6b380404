"""Export: a run's model leaves PyTorch as ONNX (one graph per registered precision) and TensorRT engines.

Every artefact is one step: written under a temporary name, compared with the PyTorch model on the whole test
split on each backend that will run it (top-1 agreement, max |delta logits|, accuracy), renamed into place only
if its first backend accepts it, and its verdict on each backend recorded in metrics.json (`export`, or
`export_rejected` with the tolerance it failed). A diagnosed precision's graph (int8) is first diagnosed layer by
layer against the fp32 graph (export.diagnose), beside it whether kept or not, and a rejection names its worst layers.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from rich.table import Table
from torch.utils.data import Dataset, IterableDataset, Subset

from ..backends import BACKENDS, BackendSpec, BuildOptions
from ..environment import cpu_features
from ..errors import UserError, VerificationError
from ..evaluate import agreement, batches, labelled_batches, load_eval_data, predict, tolerance_failure
from ..files import atomic_path
from ..models import load_model
from ..records import ExportRecord, ExportSidecar, Int8Diagnosis, RejectedExport
from ..rundir import RunDir, write_sidecar
from ..settings import ExportConfig
from .diagnose import diagnose
from .graph import calibration_indices
from .precisions import INT8_METHODS, PRECISIONS, Conversion
from .sidecar import sidecar
from .source import Source, resolve_source
from .triton import write_triton_repository


@dataclass(frozen=True)
class Planned:
    """One artefact an export makes: its precision, kind, the runtime its graph is for, its file, the backends that
    verify it (the first decides whether it is kept), and the backend that builds it (None: an ONNX graph)."""

    precision: str
    format: str  # onnx, or a backend's own artefact kind
    target: str
    path: Path  # relative to the run
    verifiers: tuple[BackendSpec, ...]
    builder: BackendSpec | None = None

    @property
    def device(self) -> str:
        return self.builder.loader.device if self.builder is not None else "cpu"


def onnx_verifiers() -> tuple[BackendSpec, ...]:
    """The installed CPU runtimes of ONNX files, in the registry's order (onnxruntime first)."""
    return tuple(s for s in BACKENDS.values() if s.onnx_verifier and s.missing("cpu") is None)


def _graph(precision: str, stage: str, target: str = "onnxruntime") -> Path:
    return Path("export") / PRECISIONS[precision].onnx_file(stage, target)


def plan(cfg: ExportConfig, stage: str) -> list[Planned]:
    """Every artefact `cfg` asks for, in the order they are made: the ONNX graphs (fp32 first: the others are
    converted from it), then for each backend that builds its own artefact the graphs made for it and its
    artefacts at the precisions it runs."""
    out = [Planned(p, "onnx", "onnxruntime", _graph(p, stage), onnx_verifiers()) for p in cfg.precisions]
    for spec in (BACKENDS[name] for name in cfg.backends):
        wanted = [p for p in cfg.precisions if spec.lacks(spec.loader.device, p) is None]
        if spec.loader.built_from == "onnx":
            graphs = [p for p in wanted if PRECISIONS[p].graph_per_target and spec.onnx_target != "onnxruntime"]
            out += [Planned(p, "onnx", spec.onnx_target, _graph(p, stage, spec.onnx_target), onnx_verifiers()[:1])
                    for p in graphs]  # fmt: skip
        own = [Path("export") / PRECISIONS[p].own_file(stage, spec.loader.suffix) for p in wanted]
        out += [Planned(p, spec.artefact, spec.onnx_target, f, (spec,), spec) for p, f in zip(wanted, own)]
    return out


def _writable(directory: Path) -> None:
    """Fail early, before minutes of work, where `directory` cannot be created or written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".gtcompress-write-test-"):
            pass
    except OSError as e:
        raise UserError(f"cannot write to {directory} ({e.strerror or e})", "choose a writable directory") from None


# The calibration images a diagnosis runs on (the first of the conversion's; it runs both graphs twice on each), in
# batches of 8: qdq_loss_debug holds every Conv's input and output of a batch (a 224-pixel ResNet-50's are 87 MB
# an image: 0.7 GB per graph at 8, 2.8 at 32).
DIAGNOSED_IMAGES, DIAGNOSED_BATCH = 64, 8


def calibration_set(train: Dataset, n: int, skip: int = 0) -> Dataset:
    """A fixed random sample of `n` training images; of a stream, its first `n` (shards are in random order).
    `skip` leaves out the first `skip` of the same sample: images held out from a calibration of that many."""
    if isinstance(train, IterableDataset):
        return list(islice(train, skip, skip + n))
    return Subset(train, calibration_indices(len(train), n, skip=skip).tolist())


class Exporter:
    """One `gtcompress export`: the artefacts of one model, verified against its PyTorch self."""

    def __init__(self, cfg: ExportConfig, say: Callable[[str], None]):
        self.cfg, self.say = cfg, say
        self.source: Source = resolve_source(cfg)
        self.model, self.spec, _ = load_model(self.source.checkpoint)
        for directory in (*([cfg.triton] if cfg.triton else []), self.source.base, self.source.base / "export"):
            _writable(Path(directory))
        self.run = RunDir(self.source.base)
        self.data = load_eval_data(self.source.data, self.spec)
        self.records: list[ExportRecord] = []
        with BACKENDS["torch"].open(self.model, "cpu", "fp32") as runner:
            self.reference = predict(runner, self.data, cfg.batch_size)
        self.reference_top1 = float(100 * (self.reference.argmax(1) == self.data.labels).mean())

    def export_all(self) -> list[ExportRecord]:
        """Every planned artefact; the Triton repository gets whatever was verified."""
        try:
            plans = plan(self.cfg, self.source.name)
            for planned in plans:
                if self._source_graph(planned) is not None and not self._source_graph(planned).is_file():
                    continue  # a reduced precision whose ONNX graph was not kept has no artefact built from it
                if planned is plans[0]:
                    self.step(planned)  # every other artefact is converted from this one: it must pass
                else:
                    self.lenient(planned)
        finally:
            if self.records:
                meta = self._write_sidecar()
                if self.cfg.triton is not None:
                    write_triton_repository(
                        Path(self.cfg.triton), self.records, self.source.base, meta, self.cfg.max_batch
                    )
                    self.say(f"Triton model repository: {self.cfg.triton}")
        return self.records

    def _write_sidecar(self) -> ExportSidecar:
        """`export/<stage>.json`: how to feed the graphs, and which file holds which precision."""
        mine = [r for r in self.run.exports() if r.stage == self.source.name]
        opset = next((r.opset for r in mine if r.precision == "fp32" and r.opset is not None), None)
        files = {Path(r.path).name: r.precision for r in mine}
        meta = sidecar(self.spec, self.data.transform, opset, self.source.checkpoint, files)
        write_sidecar(self.run.sidecar_path(self.source.name), meta)
        return meta

    def _source_graph(self, planned: Planned) -> Path | None:
        """The ONNX graph a backend's own artefact is built from (None: it is not built from one)."""
        if planned.builder is None or planned.builder.loader.built_from != "onnx":
            return None
        return self.source.base / _graph(planned.precision, self.source.name, planned.target)

    def lenient(self, planned: Planned) -> None:
        """A reduced-precision step; with keep_going, one its first backend rejects is reported (and recorded)
        and the others go on."""
        try:
            self.step(planned)
        except VerificationError as e:
            if not self.cfg.keep_going:
                raise
            self.say(f"not kept: {e.message}")

    def step(self, planned: Planned) -> None:
        """Make one artefact under a temporary name, diagnose it where its precision is, verify it on each of its
        backends, keep it if the first accepts it, and record every verdict."""
        final = self.source.base / planned.path
        with atomic_path(final) as tmp:
            start = time.perf_counter()
            images = self._calibration(planned)
            extra = self._make(planned, tmp, images)
            seconds = time.perf_counter() - start
            diagnosis = self._diagnose(planned, tmp, images)
            # the diagnosis explains a rejection once: by the first backend, whose verdict fails the command
            verdicts = [
                self._verify(spec, planned, tmp, seconds, extra, diagnosis if i == 0 else None)
                for i, spec in enumerate(planned.verifiers)
            ]
            for verdict in verdicts[1:]:
                if isinstance(verdict, VerificationError):
                    self._reject(verdict, planned)
            if isinstance(verdicts[0], VerificationError):
                self._reject(verdicts[0], planned)
                raise verdicts[0]
        for record in verdicts:
            if isinstance(record, ExportRecord):
                self.keep(record)

    def _calibration(self, planned: Planned) -> Dataset:
        """The training images a calibrated precision's graph is made from (none for the others)."""
        if planned.builder is not None or not PRECISIONS[planned.precision].calibrated:
            return []
        return calibration_set(self.data.train, self.cfg.calibration_images)

    @property
    def fp32_graph(self) -> Path:
        """The fp32 ONNX graph, made first: every other graph is converted from it."""
        return self.source.base / plan(self.cfg, self.source.name)[0].path

    def _make(self, planned: Planned, tmp: Path, images: Dataset) -> dict[str, Any]:
        """Write the artefact's file at `tmp` (a calibrated graph from `images`); its record's extra fields."""
        if planned.builder is not None:
            options = BuildOptions(self.cfg.max_batch, self.cfg.workspace_gib, self.cfg.opt_batches, tmp.parent)
            source = self._source_graph(planned) or self.model
            return planned.builder.build(source, tmp, planned.precision, options)
        heldout = self._heldout(images)
        conversion = Conversion(
            model=self.model,
            img_size=self.spec.img_size,
            fp32=self.fp32_graph,
            dst=tmp,
            target=planned.target,
            opset=self.cfg.opset,
            calibration=lambda: batches(images, 32, self.data.workers),
            calibration_images=len(images),
            calibration_method=self.cfg.calibration_method,
            int8_format=self.cfg.int8_format,
            int8_method=self.cfg.int8_method,
            int8_max_drop=self.cfg.int8_max_drop,
            heldout=lambda: labelled_batches(heldout, 64, self.data.workers),
            heldout_images=len(heldout),
            int8_head=self.cfg.int8_head,
        )
        return PRECISIONS[planned.precision].convert(conversion)

    def _heldout(self, images: Dataset) -> Dataset:
        """The labelled training images after the calibration ones, where the int8 method measures on them; one
        line where the training split has none left."""
        if not len(images) or not INT8_METHODS[self.cfg.int8_method].heldout:
            return []
        skip = self.cfg.calibration_images
        heldout = calibration_set(self.data.train, self.cfg.int8_heldout_images, skip=skip)
        if not len(heldout):
            raise UserError(
                f"{self.cfg.int8_method} int8 measures on training images the calibration did not see, but the "
                f"training split has none beyond the {skip} calibration images",
                "pass fewer --calibration-images, or --int8-method ptq",
            )
        return heldout

    def _diagnose(self, planned: Planned, tmp: Path, images: Dataset) -> Int8Diagnosis | None:
        """A diagnosed precision's ONNX graph against the fp32 graph on the first DIAGNOSED_IMAGES calibration
        images, written beside it (`<graph>.diagnosis.json`) whether it is kept or not."""
        if planned.builder is not None or not PRECISIONS[planned.precision].diagnosed:
            return None
        sample = Subset(images, range(min(len(images), DIAGNOSED_IMAGES)))
        diagnosis = diagnose(
            self.fp32_graph, tmp, batches(sample, DIAGNOSED_BATCH, self.data.workers), cpu_features(), planned.path.name
        )
        self.run.write_diagnosis(planned.path, diagnosis)
        return diagnosis

    def _verify(
        self,
        spec: BackendSpec,
        planned: Planned,
        tmp: Path,
        seconds: float,
        extra: dict[str, Any],
        diagnosis: Int8Diagnosis | None = None,
    ) -> ExportRecord | VerificationError:
        """`spec` running `tmp` against PyTorch: the artefact's record there, or why it failed (with its
        diagnosis's worst layers, where it has one)."""
        with spec.open(tmp, planned.device, planned.precision) as runner:
            stats = agreement(predict(runner, self.data, self.cfg.batch_size), self.reference, self.data.labels)
        failure = tolerance_failure(stats, self.cfg.tolerances[planned.precision])
        if failure:
            failed, why = failure
            key = "max_abs_diff" if failed == "finite" else failed
            return VerificationError(
                f"{planned.path.name} failed verification against PyTorch on {spec.name} "
                f"({self.data.description}): {why}",
                f"{PRECISIONS[planned.precision].hint}, or accept it with --tolerance {planned.precision}.{key}=VALUE",
                str(planned.path),
                spec.name,
                failed,
                diagnosis.summary() if diagnosis is not None else "",
            )
        return ExportRecord(
            stage=self.source.name,
            format=planned.format,
            backend=spec.name,
            precision=planned.precision,
            path=str(planned.path),
            bytes=tmp.stat().st_size,
            top1=stats["top1"],
            reference_top1=self.reference_top1,
            top1_agreement=stats["top1_agreement"],
            max_abs_diff=stats["max_abs_diff"],
            export_seconds=seconds,
            test_images=len(self.data.labels),
            target=planned.target,
            **extra,
        )

    def _reject(self, error: VerificationError, planned: Planned) -> None:
        mtime = self.source.checkpoint.stat().st_mtime
        record = RejectedExport(
            path=error.path, reason=error.verdict, checkpoint_mtime=mtime, backend=error.backend,
            precision=planned.precision, failed=error.failed,
        )  # fmt: skip
        self.run.reject_export(record)
        if error.backend != planned.verifiers[0].name:
            self.say(f"not verified on {error.backend}: {error.message}")

    def keep(self, record: ExportRecord) -> None:
        """The artefact is in place and verified on a backend: record it (replacing its earlier record there)."""
        self.records.append(record)
        self.run.keep_export(record)
        self.say(
            f"verified {record.path} on {record.backend}: top-1 {record.top1:.2f}% (PyTorch "
            f"{record.reference_top1:.2f}%), agreement {record.top1_agreement:.2f}%, max |delta| "
            f"{record.max_abs_diff:.2g}, {record.bytes / 1e6:.2f} MB"
        )


def is_up_to_date(cfg: ExportConfig) -> bool:
    """Whether every planned artefact has its verdict on each of its backends for the current checkpoint and
    settings: verified (the file newer than the checkpoint, its record made as `cfg` asks: see
    ExportPrecision.made_with), or rejected there (a rejection by the first backend counts only with keep_going:
    trying it again would fail again)."""
    source = resolve_source(cfg)
    run = RunDir(source.base)
    trained = source.checkpoint.stat().st_mtime
    kept = {(r.path, r.backend): r for r in run.exports()}
    rejected = {(r.path, r.backend) for r in run.rejected() if r.checkpoint_mtime >= trained}
    for planned in plan(cfg, source.name):
        file = source.base / planned.path
        fresh = file.is_file() and file.stat().st_mtime >= trained
        wanted = PRECISIONS[planned.precision].made_with(cfg, planned.target)
        for i, spec in enumerate(planned.verifiers):
            key = (str(planned.path), spec.name)
            record = kept.get(key)
            made = record is not None and all(getattr(record, k) == v for k, v in wanted.items())
            if not ((made and fresh) or (key in rejected and (i > 0 or cfg.keep_going))):
                return False
    return True


def run_export(cfg: ExportConfig, say: Callable[[str], None] = print) -> list[ExportRecord]:
    """Export, verify and record the configured artefacts; returns their records."""
    return Exporter(cfg, say).export_all()


def artefact_table(records: list[ExportRecord]) -> Table:
    """The verified artefacts: size, accuracy, agreement with PyTorch, export time."""
    table = Table(title="gtcompress export (verified against PyTorch on the test split)", title_justify="left")
    for col in ("artefact", "backend", "precision", "MB", "top-1 %", "PyTorch %", "agree %", "max |Δ|", "export s"):
        table.add_column(col, justify="left" if col in ("artefact", "backend", "precision") else "right")
    for r in records:
        table.add_row(
            r.path,
            r.backend,
            r.precision,
            f"{r.bytes / 1e6:.2f}",
            f"{r.top1:.2f}",
            f"{r.reference_top1:.2f}",
            f"{r.top1_agreement:.2f}",
            f"{r.max_abs_diff:.2g}",
            f"{r.export_seconds:.1f}",
        )
    return table
