"""What every benchmark script shares, written once: the ``--quick`` flag, ``results/<name>[-quick].{json,md,png}``,
the goal table and its one-line summary, the generated section of the docs, and matplotlib's file-only setup.

Standard library only at import: ``first_hour.py`` runs with the system Python, before any venv exists.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

Goal = Mapping[str, Any]


def parser(doc: str | None, quick: str) -> argparse.ArgumentParser:
    """The script's command line: its docstring as the help, and ``--quick`` (CI's short run) described by ``quick``."""
    out = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    out.add_argument("--quick", action="store_true", help=quick)
    return out


@dataclass(frozen=True)
class Bench:
    """One benchmark's outputs. A quick run writes ``<name>-quick.*`` (git-ignored) and never touches the docs,
    so CI cannot overwrite the measured figures."""

    name: str  # results/<name>.*
    quick: bool = False
    section: str | None = None  # the docs' <!-- section:begin/end --> markers; None: the name

    @property
    def stem(self) -> str:
        return f"{self.name}-quick" if self.quick else self.name

    def path(self, suffix: str) -> Path:
        """``results/<stem><suffix>`` (the folder is made on first use)."""
        RESULTS.mkdir(parents=True, exist_ok=True)
        return RESULTS / f"{self.stem}{suffix}"

    def publish(self, data: Any, text: str, *, plot: Callable[[Path], None] | None = None,
                figure: str | None = None, docs: bool = True) -> Path | None:
        """Write the json, the markdown and (through ``plot``) the png; a full run with ``docs`` also puts the
        markdown (and, with ``figure`` as its alt text, the png) into its docs section. Returns that page."""
        self.path(".json").write_text(json.dumps(data, indent=1, default=str) + "\n")
        self.path(".md").write_text(text)
        if plot is not None:
            plot(self.path(".png"))
        if self.quick or not docs:
            return None
        page = write_section(self.section or self.name, text, figure=self.path(".png") if figure else None,
                             alt=figure or "")
        print(f"{self.section or self.name}: written to {page.relative_to(ROOT)}" if page else
              f"no page holds the <!-- {self.section or self.name}:begin/end --> markers: docs not updated")
        return page


def pages(root: Path | None = None) -> list[Path]:
    """The pages that may hold generated sections: README.md and docs/*.md."""
    root = root or ROOT
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def write_section(name: str, text: str, *, figure: Path | None = None, alt: str = "",
                  root: Path | None = None) -> Path | None:
    """Replace what lies between ``<!-- name:begin -->`` and ``<!-- name:end -->`` on the page that holds them
    (the figure linked relative to that page); None, nothing written, when no page does."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    for page in pages(root):
        if not page.is_file():
            continue
        old = page.read_text()
        start = old.find(begin)
        stop = old.find(end, start + len(begin)) if start >= 0 else -1
        if start < 0 or stop < 0:
            continue
        body = text.rstrip("\n") + "\n"
        if figure is not None:
            body += f"\n![{alt}]({Path(os.path.relpath(figure, page.parent)).as_posix()})\n"
        page.write_text(old[:start + len(begin)] + "\n" + body + old[stop:])
        return page
    return None


def goal(text: str, value: Any, target: str, met: bool, **extra: Any) -> dict[str, Any]:
    """One checked claim, as every benchmark's json stores it."""
    return {"goal": text, "value": value, "target": target, "met": bool(met), **extra}


def goal_table(goals: Sequence[Goal], value: str | Callable[[Goal], str] = "{:.3f}",
               columns: Sequence[str] = ("value", "target")) -> str:
    """``| goal | <columns> | met |`` in markdown; ``value`` formats the value column (a format string for the
    value, or a function of the whole goal), the other columns print as they are."""
    def cell(g: Goal, column: str) -> str:
        if column != "value":
            return str(g[column])
        return value(g) if callable(value) else value.format(g["value"])

    lines = ["| goal | " + "".join(f"{c} | " for c in columns) + "met |",
             "|---|" + "".join("---:|" if c == "value" else "---|" for c in columns) + "---|"]
    lines += [f"| {g['goal']} | " + "".join(f"{cell(g, c)} | " for c in columns)
              + ("yes" if g["met"] else "**no**") + " |" for g in goals]
    return "\n".join(lines) + "\n"


def goal_summary(goals: Sequence[Goal]) -> str:
    """``N/M goals met`` and the missed ones, for the end of a run's output."""
    missed = [str(g["goal"]) for g in goals if not g["met"]]
    return f"{len(goals) - len(missed)}/{len(goals)} goals met" + (f"; missed: {missed}" if missed else "")


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display on CI or over ssh)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, *, dpi: int = 110, tight: bool = True) -> None:
    """Lay out, save and close ``fig``; ``tight=False`` crops to the drawing instead (a colorbar beside axes)."""
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches=None if tight else "tight")
    pyplot().close(fig)
