"""``runs/<name>/metrics.jsonl``: one JSON line per completed round, each round exactly once.

A round's line is written (and synced) before its checkpoint; a server cuts the file back to the round it
starts from before writing its first line (the checkpoint's round on resume, 0 on a start without one), so a
line written after the last checkpoint of a killed run, or the lines of a run whose ``state.pt`` was deleted,
never appear twice. :func:`read_metrics` keeps the last line of a round in any case.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pocketlearn.checkpoint import write_atomic


class MetricsLog:
    def __init__(self, path: Path):
        self.path = path  # the folder is made by the first line: a run that fails to start leaves nothing

    def append(self, record: dict[str, Any]) -> None:
        """Add one round's line, on disk before the round's checkpoint is written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate(self, last_round: int) -> int:
        """Keep only rounds up to ``last_round`` (and drop a torn line); returns how many rounds were dropped."""
        if not self.path.exists():
            return 0
        records = read_metrics(self.path)
        keep = [r for r in records if r["round"] <= last_round]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep).encode())
        return len(records) - len(keep)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file, one per round (the last written wins); a torn line is ignored."""
    by_round: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("round"), int):
            by_round[record["round"]] = record
    return [by_round[r] for r in sorted(by_round)]
