"""``runs/<name>/metrics.jsonl``: one JSON line per round, cut back to the checkpoint when a run resumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate(self, last_round: int) -> None:
        """Drop lines of rounds after ``last_round`` (written after the last checkpoint of a killed run)."""
        if not self.path.exists():
            return
        keep = [line for line in read_metrics(self.path) if line["round"] <= last_round]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file; a torn last line (killed mid-write) is ignored."""
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
