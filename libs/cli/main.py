"""What every ``accrue`` command shares: where the running mesh is, dates and tables.

The commands themselves know the services, so they live under services/ (services/cli.py
assembles the ``accrue`` tool); nothing here imports them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path


def mesh_setting(key: str, hint: str) -> str:
    """``key`` from the environment, else from the .accrue/run.env `make run` wrote (in this
    folder, a parent, or the checkout); exits with ``hint`` when neither has it."""
    value = os.environ.get(key)
    if value:
        return value
    for folder in [Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[2]]:
        run_env = folder / ".accrue" / "run.env"
        if run_env.exists():
            for line in run_env.read_text().splitlines():
                if line.startswith(f"{key}="):
                    return line.split("=", 1)[1]
    sys.exit(f"accrue: {hint}")


def when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the last one is left ragged (it may hold spaces)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]).rstrip() for row in [header, *rows]
    )
