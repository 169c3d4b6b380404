"""Benchmark: latency, throughput and size of a run's models on every backend, side by side in one process.

Each measurement runs one stage's artefact on one registered backend at one precision, setting and batch size:
warm-up calls, then timed calls until `iters` and/or `seconds` is reached (timing.py). CPU backends are timed at
each thread count asked for, CUDA backends eager and replaying CUDA graphs, as deployments choose. The teacher
and the students are measured in the same run, interleaved per batch size, so their ratio compares one machine
state.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .backends import BACKENDS, Backend, BackendSpec, Setting, settings, thread_counts
from .environment import command_line, machine_info, versions
from .errors import UserError
from .models import count_macs, count_params, load_model
from .records import BenchFile, BenchResult, ModelSize, Skipped, in_order
from .rundir import RunDir, resolve_run
from .settings import BenchConfig
from .stages import deployable_teachers, distilled_students, stage_records, stages
from .timing import CUDA_TIMING, latency_stats, like_for_like_cuda, time_backend


@dataclass(frozen=True, eq=False)
class Target:
    """One thing to time: a stage's artefact on a backend at a precision and setting (each target is its own)."""

    stage: str
    spec: BackendSpec
    device: str
    precision: str
    setting: Setting
    path: Path  # the file timed (for torch, the checkpoint)
    source: Any  # what the backend opens: the model for torch, else the path
    max_batch: int | None = None


class Bench:
    """One `gtcompress bench`: finds what the run has, times it, returns bench.json's content."""

    def __init__(self, cfg: BenchConfig, say: Callable[[str], None] = print, console: Console | None = None):
        self.cfg, self.say, self.console = cfg, say, console
        self.run: RunDir = resolve_run(cfg.run)
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda was asked for, but CUDA is not available", "use --device cpu or auto")
        self.cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        self.threads = thread_counts(cfg.threads)
        self.skipped: list[Skipped] = []
        self.missing: list[str] = []
        self.models: dict[str, ModelSize] = {}
        self.records = stage_records(self.run)
        self.exports = self.run.exports()

    # -- what can run -----------------------------------------------------------------------------------------
    def device(self, spec: BackendSpec) -> str:
        """Where `spec` is timed: the asked-for device, else CUDA where it runs there, else the CPU."""
        if self.cfg.device != "auto":
            return self.cfg.device
        on_cuda = self.cuda and "cuda" in spec.devices and spec.missing("cuda") is None
        return "cuda" if on_cuda or "cpu" not in spec.devices else "cpu"

    def backends(self) -> list[tuple[BackendSpec, str]]:
        """The asked-for backends (all where none is asked) with their devices; those that cannot run here are
        skipped with the reason (or, when asked for, refused)."""
        chosen = []
        for spec in BACKENDS.values():
            if self.cfg.backends is not None and spec.name not in self.cfg.backends:
                continue
            device = self.device(spec)
            reason = spec.missing(device)
            if reason is None:
                chosen.append((spec, device))
            elif self.cfg.backends is not None:
                spec.require(device)
            else:
                self.skipped.append(Skipped(backend=spec.name, reason=reason))
        return chosen

    def _load(self, stage: str) -> Any:
        """The stage's model (its size recorded), or None where its checkpoint is missing."""
        ckpt = self.run.checkpoint(stage)
        if not ckpt.is_file():
            self.missing.append(f"{ckpt.name} (the {stage} stage has not finished: gtcompress distill --resume)")
            return None
        net, spec, _ = load_model(ckpt)
        size = {
            "params": count_params(net),
            "macs": count_macs(net, spec.img_size),
            "checkpoint_bytes": ckpt.stat().st_size,
        }
        self.models[stage] = ModelSize(arch=spec.arch, img_size=spec.img_size, num_classes=spec.num_classes, **size)
        return net

    def _precisions(self, stage: str, spec: BackendSpec, device: str) -> list[str]:
        """The precisions to time `spec` at: those asked for (saying why this backend has none of some that it
        has elsewhere), else its defaults here."""
        if self.cfg.precisions is None:
            return list(spec.default_precisions(device))
        for precision in self.cfg.precisions:
            lack = spec.lacks(device, precision)
            if lack is not None and any(precision in ps for ps in spec.precisions.values()):
                self.skipped.append(Skipped(stage=stage, backend=spec.name, precision=precision, reason=lack))
        return [p for p in self.cfg.precisions if spec.lacks(device, p) is None]

    def stages(self) -> list[str]:
        """The stages asked for (each one of the run's), else every student distilled from the GT and the
        reference teacher."""
        known = [s.name for s in stages(self.run.saved_config())]
        for name in self.cfg.stages or ():
            if name not in known:
                raise UserError(f"unknown stage '{name}'", f"this run's stages: {', '.join(known)}")
        return list(
            self.cfg.stages or (*distilled_students(self.records, qat=True), *deployable_teachers(self.records)[:1])
        )

    def targets(self) -> list[Target]:
        backends, out = self.backends(), []
        for stage in self.stages():
            net = self._load(stage)
            for spec, device in backends if net is not None else ():
                for precision in self._precisions(stage, spec, device):
                    found = self._artefact(stage, spec, precision, net)
                    for setting in settings(spec, device, self.threads, self.cfg.cuda_graph) if found else ():
                        out.append(Target(stage, spec, device, precision, setting, *found))
        self._check_asked(out)
        return out

    def _check_asked(self, out: list[Target]) -> None:
        for precision in self.cfg.precisions or ():
            if not any(t.precision == precision for t in out):
                raise UserError(
                    f"nothing in {self.run.path} can run at precision {precision}",
                    f"export it first: gtcompress export --precision {precision}",
                )
        for name in self.cfg.backends or ():
            if not any(t.spec.name == name for t in out):
                fix = f"gtcompress export --backend {name}" if BACKENDS[name].loader else "gtcompress export"
                raise UserError(f"nothing in {self.run.path} can run on {name}", f"make it with {fix}")
        if not out:
            raise UserError(
                f"nothing to benchmark in {self.run.path}", "finish the run with gtcompress distill --resume"
            )

    def _artefact(self, stage: str, spec: BackendSpec, precision: str, net: Any) -> tuple[Path, Any, int | None] | None:
        """(file, what the backend opens, the engine's largest batch) of a verified artefact, or None (and why)."""
        if spec.kind.model:  # the checkpoint itself, whose model is loaded already
            return self.run.checkpoint(stage), net, None
        wanted = (stage, spec.name, precision, spec.artefact, spec.onnx_target)
        record = next(
            (r for r in self.exports if (r.stage, r.backend, r.precision, r.format, r.target) == wanted), None
        )
        if record is None or not (self.run.path / record.path).is_file():
            if precision == "fp32" or self.cfg.precisions is not None:
                options = f"--stage {stage}" + (f" --precision {precision}" if precision != "fp32" else "")
                trt = f" --backend {spec.name}" if spec.loader else ""
                self.missing.append(
                    f"{stage} {precision} verified on {spec.name} (make it with gtcompress export {options}{trt})"
                )
            return None
        built_on = getattr(record, "gpu", None)
        if built_on and built_on != torch.cuda.get_device_name():
            raise UserError(
                f"{record.path} was built for {built_on}, but this GPU is {torch.cuda.get_device_name()}",
                f"rebuild it here with gtcompress export --stage {stage} --backend {spec.name}",
            )
        path = self.run.path / record.path
        return path, path, getattr(record, "max_batch", None)

    # -- timing -------------------------------------------------------------------------------------------------
    def measure(self) -> BenchFile:
        """Time every target at every batch size. Targets that differ only in their stage are timed together,
        batch sizes outermost, so teacher and student are side by side; each group's runners are released
        before the next group's open."""
        targets, threads = self.targets(), torch.get_num_threads()
        if any(t.device == "cuda" for t in targets):
            like_for_like_cuda()
        groups: dict[tuple[Any, ...], list[Target]] = {}
        for t in targets:
            groups.setdefault((t.spec.name, t.device, t.precision, t.setting), []).append(t)
        rng, results = np.random.default_rng(0), []
        with self._progress() as progress:
            task = progress.add_task("bench", total=len(targets) * len(self.cfg.batch_sizes))
            for group in groups.values():
                results += self._time_group(group, rng, progress, task)
        torch.set_num_threads(threads)
        return self._file(results, threads, any(t.device == "cuda" for t in targets))

    def _time_group(self, group: list[Target], rng: np.random.Generator, progress: Any, task: Any) -> list[BenchResult]:
        results, opened = [], {}
        with ExitStack() as runners:  # each runner opened once, all released when the group is done
            for batch, target in ((b, t) for b in self.cfg.batch_sizes for t in group):
                what = f"{target.stage} {target.spec.name} {target.precision} {target.setting.label()} b{batch}"
                progress.update(task, description=what)
                if target.max_batch is not None and batch > target.max_batch:
                    self._too_large(target, batch)
                else:
                    if target not in opened:
                        runner = target.spec.open(target.source, target.device, target.precision, target.setting)
                        opened[target] = runners.enter_context(runner)
                    results.append(self._time(target, opened[target], batch, rng))
                    if not progress.live.is_started:
                        self.say(f"{what}: p50 {results[-1].p50_ms:.3f} ms  {results[-1].throughput:.0f}/s")
                progress.advance(task)
        return results

    def _too_large(self, target: Target, batch: int) -> None:
        reason = (
            f"the {target.spec.name} artefact's largest batch is {target.max_batch} (rebuild with gtcompress "
            f"export --backend {target.spec.name} --max-batch N)"
        )
        self.skipped.append(
            Skipped(
                stage=target.stage,
                backend=target.spec.name,
                precision=target.precision,
                batch_size=batch,
                reason=reason,
            )
        )

    def _file(self, results: list[BenchResult], threads: int, cuda: bool) -> BenchFile:
        settings = self.cfg.model_dump(mode="json", exclude={"run"}) | {"threads": list(self.threads)}
        return BenchFile(
            run=str(self.run.path),
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            command=command_line(),
            device=machine_info(threads, cuda),
            versions=versions(),
            settings=settings | ({"torch_cuda": CUDA_TIMING} if cuda else {}),
            models=self.models,
            reference=next((t for t in deployable_teachers(self.records) if t in self.models), None),
            results=results,
            skipped=self.skipped,
            missing=self.missing,
        )

    def _time(self, target: Target, runner: Backend, batch: int, rng: np.random.Generator) -> BenchResult:
        """One bench.json result: a target's latencies at one batch size on random input."""
        size = self.models[target.stage].img_size
        x = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
        iters, seconds = self.cfg.limits()
        samples = time_backend(runner, x, self.cfg.warmup, iters, seconds)
        return BenchResult(
            stage=target.stage,
            arch=self.models[target.stage].arch,
            backend=target.spec.name,
            device=runner.device,
            precision=target.precision,
            batch_size=batch,
            threads=target.setting.threads,
            cuda_graph=target.setting.cuda_graph,
            artefact=os.path.relpath(target.path, self.run.path),
            bytes=target.path.stat().st_size,
            **latency_stats(samples, batch),
            samples_ms=[round(s, 5) for s in samples],
        )

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description:<48}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=self.console is None or not self.console.is_terminal,
        )


def run_bench(cfg: BenchConfig, say: Callable[[str], None] = print, console: Console | None = None) -> BenchFile:
    """Benchmark the run's models and write `<run>/bench.json` (atomically); returns its content."""
    bench = Bench(cfg, say, console)
    result = bench.measure()
    bench.run.write_bench(result)
    for line in bench.missing:
        say(f"not benchmarked, missing: {line}")
    for s in bench.skipped:
        say(f"skipped {s.what()}: {s.reason}")
    return result


def reference_teacher(bench: BenchFile) -> str | None:
    """The teacher that speed-ups are measured against (the Generous Teacher, else the Standard Teacher), where
    it was timed."""
    return bench.reference if any(r.stage == bench.reference for r in bench.results) else None


def speedup(bench: BenchFile, result: BenchResult) -> float | None:
    """The teacher's best fp32 p50 on the same backend and batch size over this result's p50."""
    teacher = reference_teacher(bench)
    ref = bench.best(teacher, result.backend, "fp32", result.batch_size) if teacher else None
    return ref.p50_ms / result.p50_ms if ref and result.stage != teacher else None


RESULT_COLUMNS = (
    "stage",
    "backend",
    "precision",
    "setting",
    "batch",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "mean ms",
    "samples/s",
)


def result_cells(r: BenchResult) -> list[str]:
    """A result as the cells under RESULT_COLUMNS (the terminal table and the report share them)."""
    percentiles = (f"{v:.3f}" for v in (r.p50_ms, r.p90_ms, r.p99_ms, r.mean_ms))
    return [r.stage, r.backend, r.precision, r.setting.label(), str(r.batch_size), *percentiles, f"{r.throughput:.1f}"]


def bench_table(bench: BenchFile) -> Table:
    """Every measurement: latency percentiles, throughput and speed-up vs the teacher."""
    teacher = reference_teacher(bench) or "teacher"
    dev = bench.device
    table = Table(
        title=f"gtcompress bench on {dev['gpu'] if dev['cuda'] else dev['cpu']} ({dev['cores']} cores)",
        caption=f"× faster: the {teacher}'s best fp32 p50 on the same backend and batch over the row's",
        box=box.SIMPLE_HEAVY,
        title_justify="left",
        caption_justify="left",
    )
    rows = []
    for r in in_order(bench.results):
        ratio = speedup(bench, r)
        rows.append([*result_cells(r), f"{ratio:.1f}×" if ratio else ""])
    for i, col in enumerate((*RESULT_COLUMNS, "× faster")):  # as wide as their cells: nothing cut in a log
        width = max([len(col), *(len(row[i]) for row in rows)])
        table.add_column(col, justify="left" if i < 4 else "right", no_wrap=True, min_width=width)
    for row in rows:
        table.add_row(*row)
    return table
