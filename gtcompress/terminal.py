"""The consoles the commands print to, and the one way to print a progress line."""

from __future__ import annotations

import os
import sys

from rich.console import Console

# Tables keep their layout in logs and pipes, where rich would otherwise assume 80 columns.
WIDTH = None if sys.stdout.isatty() else 120
console = Console(soft_wrap=True, width=WIDTH)
err_console = Console(stderr=True, soft_wrap=True, width=WIDTH)


def say(line: str, to: Console | None = None) -> None:
    """A progress line as it is: file names and hints hold brackets that rich would read as markup."""
    (to or console).print(line, markup=False, highlight=False)


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process: the one that prints a command's results."""
    return int(os.environ.get("RANK", "0")) == 0
