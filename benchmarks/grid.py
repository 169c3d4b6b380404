"""What benchmarks/method.py and gt_sweep.py share: `gtcompress distill` runs as resumable subprocesses with
their CPU cost recorded, t-intervals over seeds, Markdown tables, and the machine's description."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from scipy import stats

from gtcompress import environment
from gtcompress.environment import machine_info, versions
from gtcompress.files import write_json, write_text
from gtcompress.rundir import RunDir
from gtcompress.stages import STAGE_NAMES

REPO = Path(__file__).resolve().parent.parent
COST_FILE = "benchmark_cost.json"


@dataclass(frozen=True)
class Task:
    """A `gtcompress distill` subprocess of the grid: its run directory, options (all but --out), and the
    stages it must finish."""

    out: Path
    args: tuple[str, ...]
    stages: tuple[str, ...] = STAGE_NAMES
    # overrides known only once an earlier run of the cell has finished (e.g. a scale read from its records)
    later: Callable[[], dict[str, Any]] | None = field(default=None, compare=False)


def sets(overrides: dict[str, Any]) -> tuple[str, ...]:
    """`--set KEY=VALUE` options for recipe overrides, in a stable order."""
    return tuple(a for key in sorted(overrides) for a in ("--set", f"{key}={overrides[key]}"))


def run_state(run: Task) -> str:
    """'done' when metrics.json holds every stage, 'partial' when the run has started, else 'new'."""
    files = RunDir(run.out)
    if set(run.stages) <= set(files.metrics()):
        return "done"
    return "partial" if files.config.exists() else "new"


def distill_command(run: Task, python: str = sys.executable) -> list[str]:
    """The command that starts `run`, or continues it with the pipeline's own --resume after an interruption."""
    base = [python, "-m", "gtcompress", "distill"]
    if run_state(run) == "partial":
        return [*base, "--resume", "--out", str(run.out)]
    return [*base, *run.args, *sets(run.later() if run.later else {}), "--out", str(run.out)]


def log_path(run: Task) -> Path:
    """<out>.log beside the run directory (not with_suffix: run names hold dots, as in b0.5)."""
    return run.out.parent / f"{run.out.name}.log"


def execute(run: Task, command: list[str], threads: int = 1) -> dict[str, float]:
    """Run `command` for `run` (log in <out>.log), add its CPU and wall seconds to <out>/benchmark_cost.json."""
    run.out.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    start = time.perf_counter()
    with open(log_path(run), "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own CPU time, exact under parallel jobs
        proc.returncode = os.waitstatus_to_exitcode(status)
    attempt = {
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "wall_seconds": time.perf_counter() - start,
        "returncode": proc.returncode,
    }
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {proc.returncode}; see {log_path(run)}")
    cost_path = run.out / COST_FILE
    attempts = json.loads(cost_path.read_text())["attempts"] if cost_path.exists() else []
    write_json(cost_path, {"attempts": [*attempts, attempt]})
    return attempt


def run_cost(run: Task) -> dict[str, float]:
    """CPU and wall seconds spent on `run` over all its attempts (0 if it was never run by a benchmark)."""
    path = run.out / COST_FILE
    attempts = json.loads(path.read_text())["attempts"] if path.exists() else []
    return {key: sum(a[key] for a in attempts) for key in ("cpu_seconds", "wall_seconds")}


def run_groups(
    groups: Sequence[Sequence[Task]],
    jobs: int = 1,
    threads: int = 1,
    say: Callable[[str], None] = print,
    after: Callable[[int], Any] | None = None,
) -> None:
    """Run each group's runs in order, `jobs` groups at a time; finished runs are skipped, started ones resumed.

    `after(i)` runs in the worker once group i is done (e.g. evaluations to cache while the next runs train)."""
    todo = [i for i, g in enumerate(groups) if any(run_state(r) != "done" for r in g)]
    say(f"{len(groups) - len(todo)} of {len(groups)} groups already done; running {len(todo)} with {jobs} job(s)")
    lock, done = threading.Lock(), [0]

    def work(index: int) -> None:
        for run in groups[index]:
            if run_state(run) == "done":
                continue
            cost = execute(run, distill_command(run), threads)
            with lock:
                say(f"  {run.out}: {cost['cpu_seconds']:.0f} CPU s, {cost['wall_seconds']:.0f} s")
        if after is not None:
            after(index)
        with lock:
            done[0] += 1
            say(f"[{done[0]}/{len(todo)}] done")

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for future in [pool.submit(work, g) for g in todo]:
            future.result()


def metrics(run: Task) -> dict[str, Any]:
    return RunDir(run.out).metrics()


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Student's t confidence interval of the mean over `values` (None for fewer than two values)."""
    n = len(values)
    if n < 2:
        return None
    mean, sem = statistics.fmean(values), statistics.stdev(values) / math.sqrt(n)
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * sem
    return mean - half, mean + half


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Every value, their mean, sample std (n-1) and 95% t-interval of the mean."""
    values = [float(v) for v in values]
    return {
        "n": len(values),
        "values": values,
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "ci95": t_interval(values),
    }


def fmt_mean_std(s: dict[str, Any], digits: int = 2) -> str:
    """'83.12 ± 0.45' (no ± for a single value)."""
    return f"{s['mean']:.{digits}f}" + (f" ± {s['std']:.{digits}f}" if s["std"] is not None else "")


def fmt_gain(s: dict[str, Any], digits: int = 2) -> str:
    """'+0.53 [-0.80, +1.86]': a signed mean difference and its 95% interval."""
    text = f"{s['mean']:+.{digits}f}"
    return text + (f" [{s['ci95'][0]:+.{digits}f}, {s['ci95'][1]:+.{digits}f}]" if s["ci95"] else "")


def machine() -> dict[str, Any]:
    """Where the benchmark ran: the machine and library versions, as gtcompress records them."""
    import torch

    return {**machine_info(cuda=torch.cuda.is_available()), "versions": versions()}


def command_line() -> str:
    return f"python {environment.command_line()}"


def publish(directory: Path, name: str, result: dict[str, Any], markdown: str) -> None:
    """Write `<name>.json` and `<name>.md` (atomically) and print the Markdown."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / f"{name}.json", result)
    write_text(directory / f"{name}.md", markdown)
    print(markdown)


def grid_parser(
    description: str, seeds: Sequence[int], settings: Sequence[str], default: Sequence[str], pairs, runs: str
) -> argparse.ArgumentParser:
    """The options every pre-registered grid takes: what to run, how, and where its runs and results go."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    p.add_argument("--settings", nargs="+", default=list(default), choices=list(settings))
    p.add_argument("--pairs", nargs="+", default=[f"{t}:{s}" for t, s in pairs], help="TEACHER:STUDENT ...")
    p.add_argument("--jobs", type=int, default=1, help="cells at once (one CPU thread each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE", help="override, every run")
    p.add_argument("--runs", type=Path, default=REPO / runs)
    p.add_argument("--results", type=Path, default=REPO / "benchmarks/results")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("--report-only", action="store_true", help="only summarise finished runs")
    return p


def pairs_and_overrides(args: argparse.Namespace) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """The (teacher, student) pairs and the --set overrides; the torch threads of this process (its evaluations)."""
    import torch

    torch.set_num_threads(args.threads)
    pairs = [tuple(x.split(":", 1)) for x in args.pairs]
    return pairs, {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.extra)}


def code_commit() -> str | None:
    """The commit of the code that ran (None outside a git checkout)."""
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return proc.stdout.strip() or None


def stored_record(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def run_grid(
    args: argparse.Namespace,
    runs: dict[Any, dict[str, Task]],
    record: Callable[[Any], dict[str, Any]],
    store: Callable[[Any], Path] | None = None,
) -> list[dict[str, Any]] | None:
    """--dry-run: print every command (None). Else run the cells (unless --report-only), each cell's `record`
    computed as soon as its runs finish, and return every cell's record; exit if a run is unfinished.

    With `store`, a finished cell's record (and the commit of the code that ran it) is written to store(cell), a
    small file to commit, and a cell whose record is stored is not run again: a grid longer than the machine's
    sessions continues in the next one without its run directories."""
    stored = {c: stored_record(store(c)) for c in runs} if store else {}
    todo = {c: group for c, group in runs.items() if stored.get(c) is None}
    if args.dry_run:
        for group in todo.values():
            for run in group.values():
                later = " + overrides read from the cell's earlier runs" if run.later else ""
                print(" ".join(distill_command(replace(run, later=None))), f"  [{run_state(run)}{later}]")
        return None
    cells = list(todo)

    def finish(cell: Any) -> dict[str, Any]:
        if not store:
            return record(cell)
        stored[cell] = {**record(cell), "code": code_commit()}
        write_json(store(cell), stored[cell])
        return stored[cell]

    if not args.report_only:
        run_groups([list(r.values()) for r in todo.values()], args.jobs, args.threads, after=lambda i: finish(cells[i]))
    missing = [str(r.out) for group in todo.values() for r in group.values() if run_state(r) != "done"]
    if missing:
        sys.exit(f"{len(missing)} run(s) unfinished, e.g. {missing[0]}; run without --report-only to finish them")
    return [stored[c] if stored.get(c) is not None else finish(c) for c in runs]
