"""Progress a person can follow: a live bar in a terminal, plain timed lines where there is none.

Rich draws nothing until the end when stdout is a file (CI, ``nohup``, a log): a long step looked hung. Here
the same calls print a line per task at most every ``POCKETLEARN_PROGRESS_EVERY`` seconds (default 15), and at
each task's end, with the elapsed time and an estimate of the time left.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich import progress as rich_progress
from rich.console import Console
from rich.errors import MarkupError
from rich.text import Text

DEFAULT_EVERY_S = 15.0


def every_s() -> float:
    """Seconds between two plain progress lines of one task (``POCKETLEARN_PROGRESS_EVERY``)."""
    try:
        return max(0.0, float(os.environ.get("POCKETLEARN_PROGRESS_EVERY", DEFAULT_EVERY_S)))
    except ValueError:
        return DEFAULT_EVERY_S


def progress_bars(*columns: Any, console: Console | None = None, **kwargs: Any) -> rich_progress.Progress:
    """A rich ``Progress`` in a terminal, a :class:`PlainProgress` otherwise (same API)."""
    console = console or Console()
    if console.is_terminal:
        return rich_progress.Progress(*columns, console=console, **kwargs)
    return PlainProgress(*columns, console=console, **kwargs)


def duration(seconds: float | None) -> str:
    """``75.2`` → ``"1 min 15 s"``; ``None`` (unknown) → ``"?"``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class PlainProgress(rich_progress.Progress):
    """Rich's progress bookkeeping without its live display: a plain line per task now and then."""

    def __init__(self, *columns: Any, console: Console, **kwargs: Any) -> None:
        kwargs.pop("transient", None)
        kwargs.pop("disable", None)
        super().__init__(*columns, console=console, disable=True, **kwargs)
        self.every_s = every_s()
        self._said: dict[rich_progress.TaskID, float] = {}
        self._finished: set[rich_progress.TaskID] = set()

    def update(self, task_id: rich_progress.TaskID, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        self._say(task_id)

    def advance(self, task_id: rich_progress.TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._say(task_id)

    def _say(self, task_id: rich_progress.TaskID) -> None:
        with self._lock:
            task = self._tasks[task_id]
        done = task.total is not None and task.completed >= task.total
        now = time.monotonic()
        if not task.visible or task_id in self._finished:
            return
        if not done and now - self._said.get(task_id, task.start_time or now) < self.every_s:
            return
        self._said[task_id] = now
        if done:
            self._finished.add(task_id)
        self.console.print(self.line(task), highlight=False, markup=False, soft_wrap=True)

    def line(self, task: rich_progress.Task) -> str:
        """``"training (lora): 40/135 (30%), 12 s elapsed, ETA 28 s, loss 0.4100"``."""
        texts = [t for c in self.columns if isinstance(c, rich_progress.TextColumn)
                 if (t := c.render(task).plain.strip())]
        description = " ".join(task.description.split())
        texts = [" ".join(t.split()) for t in texts if t != f"{task.percentage:.0f}%"]  # said with the count
        if description and not any(description in t for t in texts):
            texts.insert(0, description)
        count = f"{task.completed:g}"
        if task.total is not None:
            count += f"/{task.total:g} ({task.percentage:.0f}%)"
        eta = "done" if task.finished else f"ETA {duration(task.time_remaining)}"
        head, rest = (texts[0], texts[1:]) if texts else ("progress", [])
        return ", ".join([f"{head}: {count}", f"{duration(task.elapsed)} elapsed", eta, *rest])


@contextmanager
def working(console: Console, text: str) -> Iterator[Any]:
    """``console.status`` in a terminal; otherwise a line at the start, one a minute while it runs, one at the end.

    Yields an object with ``update(text)``, as rich's status does.
    """
    if console.is_terminal:
        with console.status(text) as live:
            yield live
        return
    plain = PlainStatus(console, text)
    try:
        yield plain
    except BaseException:
        plain.stop(failed=True)
        raise
    plain.stop()


class PlainStatus:
    """A spinner's text as log lines: said at start and on each ``update``, repeated while nothing changes."""

    def __init__(self, console: Console, text: str, every_s: float = 60.0) -> None:
        self.console, self.text, self.every_s = console, text, every_s
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._say(f"{text} …")
        self._thread = threading.Thread(target=self._heartbeat, daemon=True)
        self._thread.start()

    def update(self, text: str) -> None:
        self.text = text
        self._say(f"{text} ({duration(time.monotonic() - self.started)} elapsed)")

    def stop(self, *, failed: bool = False) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        ended = "stopped after" if failed else "done in"
        self._say(f"{self.text}: {ended} {duration(time.monotonic() - self.started)}")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.every_s):
            self._say(f"{self.text}: still running, {duration(time.monotonic() - self.started)} elapsed")

    def _say(self, line: str) -> None:
        try:
            line = Text.from_markup(line).plain  # the status's [bold] is for a terminal
        except MarkupError:
            pass
        self.console.print(line, highlight=False, markup=False, soft_wrap=True)
