"""`gtcompress repair`: a damaged run's metrics.json and history.jsonl rebuilt from what the run still holds.

Each finished stage's checkpoint carries its stage record (pipeline saves the same record in both), so metrics.json's
stages come back from the checkpoints, in training order; its export lists are kept where they still read (else
`gtcompress export` verifies the files again); history.jsonl keeps its readable lines.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import UserError
from .files import write_json
from .models import read_checkpoint
from .records import StageRecord
from .rundir import RunDir, resolve_run
from .stages import recorded_stages, run_stages, stages
from .typed import validate


def repair(path: Path | None, say: Callable[[str], None] = print) -> RunDir:
    """Rebuild the run's metrics.json where it does not read or lacks a finished stage, and drop history.jsonl's
    unreadable lines (each file written atomically); say what was kept, what was dropped, and what to run next."""
    run = resolve_run(path)
    cfg = run.saved_config()
    if _reads_whole(run, cfg, say):
        say("metrics.json reads and records every finished stage: left as it is")
    else:
        _rebuild_metrics(run, cfg, say)
    epochs, unreadable = run.readable_history()
    if unreadable:
        run.write_history(epochs)
        say(f"history.jsonl: dropped {len(unreadable)} unreadable line(s) ({', '.join(map(str, unreadable))})")
    done = set(run.stage_records()) >= set(run_stages(cfg))
    say(f"next: gtcompress {f'report {run.path}' if done else f'distill --resume --out {run.path}'}")
    return run


def _reads_whole(run: RunDir, cfg: RunConfig, say: Callable[[str], None]) -> bool:
    """Whether metrics.json reads (its stages and export lists) and records every finished stage; where not, say
    why."""
    try:
        recorded_stages(run, cfg)
        run.exports()
        run.rejected()
    except UserError as e:
        say(e.message)
        return False
    return True


def _rebuild_metrics(run: RunDir, cfg: RunConfig, say: Callable[[str], None]) -> None:
    """metrics.json from the records the checkpoints carry, in training order, with the export lists that still
    read; without a readable checkpoint, no metrics.json (as before the first stage finished)."""
    records = {}
    for name in (s.name for s in stages(cfg) if run.checkpoint(s.name).is_file()):
        path = run.checkpoint(name)
        try:
            carried = read_checkpoint(path).get("metrics")
            records[name] = validate(StageRecord, carried, f"{path.name} carries no readable stage record")
        except UserError as e:  # set aside, not deleted: the resumed run trains the stage again
            path.rename(path.with_name(f"{path.name}.damaged"))
            say(f"{e.message}: left out of metrics.json, moved to {path.name}.damaged")
    exports = _readable_exports(run, say)
    if records:
        write_json(run.metrics_path, {**{k: r.as_json() for k, r in records.items()}, **exports})
        say(f"metrics.json: rebuilt with {len(records)} stage records from the checkpoints ({', '.join(records)})")
    else:
        run.metrics_path.unlink(missing_ok=True)
        say("metrics.json: removed (no finished stage's checkpoint reads)")


def _readable_exports(run: RunDir, say: Callable[[str], None]) -> dict[str, Any]:
    """metrics.json's export lists that still read, as written; one that does not is dropped, with a line saying
    how to verify the exported files again."""
    try:
        metrics = run.metrics()
    except UserError:  # not JSON, or not an object: none of it reads
        metrics = None
    kept, dropped = {}, []
    for key, read in (("export", run.exports), ("export_rejected", run.rejected)):
        if metrics is None:
            dropped += [key] if run.export_dir.is_dir() else []
        elif key in metrics:
            try:
                read()
                kept[key] = metrics[key]
            except UserError:
                dropped.append(key)
    if dropped:
        say(
            f"metrics.json: its {' and '.join(dropped)} records did not read, dropped; verify the exported files "
            f"again: gtcompress export {run.path} --stage STAGE --precision P"
        )
    return kept
