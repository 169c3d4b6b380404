"""How fast the command line answers: `gtcompress --help` and each command's `--help` against `import timm`, the
cost the CLI used to pay before printing anything. Interleaved rounds in one run, fresh processes each time.

    python -m benchmarks.cli_help [--rounds 5] [--out benchmarks/results/cli_help.json]

Goal (issue 36): `gtcompress --help` takes at most 0.25x the time of `python -c "import timm"`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.grid import command_line, machine
from gtcompress.files import write_json

GOAL = 0.25
COMMANDS = {
    "import timm": [sys.executable, "-c", "import timm"],
    "gtcompress --help": [sys.executable, "-m", "gtcompress", "--help"],
    "gtcompress distill --help": [sys.executable, "-m", "gtcompress", "distill", "--help"],
    "gtcompress run --help": [sys.executable, "-m", "gtcompress", "run", "--help"],
}


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cli_help.json"))
    args = parser.parse_args(argv)
    samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):  # interleaved: drift on the machine falls on every command alike
        for name, command in COMMANDS.items():
            samples[name].append(seconds(command))
    medians = {name: statistics.median(s) for name, s in samples.items()}
    ratios = {name: medians[name] / medians["import timm"] for name in COMMANDS if name != "import timm"}
    result = {
        "benchmark": "cli_help",
        "command": command_line(),
        "machine": machine(),
        "rounds": args.rounds,
        "seconds": samples,
        "median_seconds": medians,
        "ratio_to_import_timm": ratios,
        "goal": GOAL,
        "met": ratios["gtcompress --help"] <= GOAL,
    }
    write_json(args.out, result)
    for name, ratio in ratios.items():
        print(f"{name}: {medians[name]:.2f} s, {ratio:.2f}x import timm ({medians['import timm']:.2f} s)")
    return result


if __name__ == "__main__":
    main()
