"""A distill run resolved once, before any stage: model names made exact, the configuration checked, the data
loaded, the students kept by the latency budget, the run directory made. The result is one frozen `Run` (its
configuration frozen too) that every stage reads: nothing assigns into the configuration after this."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from . import terminal
from .candidates import candidate_table, measure, within_budget
from .config import MatchScale, RunConfig, differences, dump_config
from .data import Splits, load_splits, loader_workers
from .distributed import DistEnv, agree, barrier, broadcast_object
from .environment import command_line, device_name, versions
from .errors import UserError
from .files import write_text
from .models import base_arch, model_source, resolve_model_name
from .records import CandidateCheck
from .rundir import RunDir, mark_latest, new_run_path, resolve_run
from .stages import recorded_stages, stages
from .stream import stream_workers
from .typed import with_values


@dataclass(frozen=True)
class Run:
    """What every stage of a distill run reads: its resolved configuration, where it runs (this process's place in
    the job and device), its data, its directory (None in a dry run), and how it prints."""

    cfg: RunConfig
    env: DistEnv
    device: torch.device
    splits: Splits
    say: Callable[[str], None]
    console: Console
    dir: RunDir | None = None


def resolve_names(cfg: RunConfig) -> tuple[RunConfig, list[str]]:
    """The configuration with exact timm names for its models, and how each name was resolved."""
    values, notes = {}, []
    for key, block in (("teacher.arch", cfg.teacher), ("generous.arch", cfg.generous)):
        if block.arch is not None:
            values[key], note = resolve_model_name(block.arch)
            notes.append(note)
    students = [resolve_model_name(arch) for arch in cfg.student.arch]
    values["student.arch"] = [name for name, _ in students]
    return with_values(cfg, values), [note for note in [*notes, *(note for _, note in students)] if note]


def environment(run: Run, requested: dict[str, Any]) -> dict[str, Any]:
    """What config.yaml records about where and how the run was started, and the split it is evaluated on."""
    return {
        "requested": requested,
        "eval_split": run.splits.eval_split or "test",
        "device": str(run.device),
        "device_name": device_name(run.device),
        "world_size": run.env.world_size,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command_line(),
        "versions": versions(),
    }


def load_resumed(out: Path | None, requested: RunConfig | None, keys: set[str]) -> tuple[RunConfig, RunDir]:
    """The run to continue and its saved configuration; `keys` of `requested` (the command line's) must agree."""
    run = resolve_run(out)
    saved = run.saved_config()
    recorded_stages(run, saved)  # a damaged metrics.json or history.jsonl is refused now, not after an epoch
    run.history()
    if requested is not None and keys:
        diffs = differences(saved, resolve_names(requested)[0], keys)
        if diffs:
            raise UserError(
                f"--resume: options differ from the run's saved configuration: {'; '.join(diffs)}",
                "drop those options, or start a new run without --resume",
            )
    return saved, run


def _check(cfg: RunConfig) -> None:
    if cfg.teacher.pretrained and cfg.teacher.checkpoint:
        raise UserError("--pretrained and --teacher-checkpoint both given", "pick one source of teacher weights")
    if model_source(cfg.teacher.arch) and cfg.teacher.checkpoint:
        raise UserError(
            f"--teacher {cfg.teacher.arch} brings its weights and --teacher-checkpoint was given too",
            "pick one source of teacher weights",
        )
    gt_arch = base_arch(cfg.generous.arch or cfg.teacher.arch)
    if cfg.generous.init == "standard" and gt_arch != base_arch(cfg.teacher.arch):
        raise UserError(
            "--gt-init standard needs the Generous Teacher to share the teacher's architecture",
            "drop generous.arch or use --gt-init scratch",
        )
    scale = cfg.student.method_config.teacher_scale
    teachers = [s.name for s in stages(cfg) if s.role != "student" and s.skip(cfg) is None]
    if isinstance(scale, MatchScale) and scale.match not in teachers:
        raise UserError(
            f"teacher_scale match:{scale.match}: this run has no such teacher stage",
            f"match one of {', '.join(teachers)}",
        )


def _locally(cfg: RunConfig, env: DistEnv) -> tuple[RunConfig, list[str], Splits]:
    """What each rank resolves by itself: exact names, a valid configuration, the data (a rank without a
    training shard of a stream is refused here, before anything is written)."""
    cfg, notes = resolve_names(cfg)
    _check(cfg)
    splits = load_splits(cfg.data)
    if splits.streaming:
        stream_workers(splits.train, loader_workers(cfg.data, splits), env.world_size, quiet=True)
    return cfg, notes, splits


def _budget(run: Run) -> tuple[Run, CandidateCheck | None]:
    """With a latency budget: the candidate students timed on the target (rank 0), the run keeping those within
    it (every rank gets the result, so none fitting is one error on all of them)."""
    cfg, splits = run.cfg, run.splits
    if cfg.budget.latency_ms is None:
        return run, None

    def check() -> CandidateCheck | None:
        if not run.env.is_main:
            return None
        result = measure(cfg, splits.num_classes, cfg.data.img_size or splits.img_size, run.say)
        run.console.print(candidate_table(result))
        return result

    result = broadcast_object(agree(run.env, check), run.env)
    kept = with_values(cfg, {"student.arch": within_budget(result)})
    return Run(kept, run.env, run.device, splits, run.say, run.console), result


def _start(run: Run, out: Path | None, requested: dict[str, Any], candidates: CandidateCheck | None) -> RunDir:
    """Create the run directory and write config.yaml (with where it started) and the budget's candidates.json."""
    env = run.env
    made = agree(env, lambda: _new_run(out) if env.is_main else None)
    directory = RunDir(broadcast_object(made.path if made else None, env))
    if env.is_main:
        write_text(directory.config, dump_config(with_values(run.cfg, {"environment": environment(run, requested)})))
        if candidates is not None:
            directory.write_candidate_check(candidates)
        mark_latest(directory.path)
    barrier(env)
    run.say(f"run directory: {directory.path}")
    return directory


def _new_run(out: Path | None) -> RunDir:
    """Rank 0's choice of a fresh run directory."""
    out = out or new_run_path()
    if RunDir(out).config.exists():
        raise UserError(f"{out} already holds a run", "continue it with --resume, or choose another --out")
    return RunDir(out)


def resolve(
    cfg: RunConfig, env: DistEnv, device: torch.device, console: Console, out: Path | None, dry_run: bool = False
) -> Run:
    """A new run, resolved and (unless a dry run) with its directory and config.yaml written."""
    say = functools.partial(terminal.say, to=console) if env.is_main else (lambda line: None)
    requested = {"teacher": cfg.teacher.arch, "student": cfg.student.arch}
    resolved, notes, splits = agree(env, lambda: _locally(cfg, env))
    for note in notes:
        say(f"resolved {note}")
    run, candidates = _budget(Run(resolved, env, device, splits, say, console))
    if dry_run:
        return run
    return Run(run.cfg, env, device, splits, say, console, _start(run, out, requested, candidates))


def resumed(cfg: RunConfig, directory: RunDir, env: DistEnv, device: torch.device, console: Console) -> Run:
    """A run to continue, with its saved (already resolved) configuration."""
    say = functools.partial(terminal.say, to=console) if env.is_main else (lambda line: None)
    splits = agree(env, lambda: load_splits(cfg.data))
    return Run(cfg, env, device, splits, say, console, directory)
