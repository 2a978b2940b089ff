import io
import time

from rich.console import Console
from rich.progress import BarColumn, TextColumn

from pocketlearn.progress import PlainProgress, duration, progress_bars, working


def _log():
    out = io.StringIO()
    return out, Console(file=out, force_terminal=False, width=200)


def test_without_a_terminal_progress_is_plain_lines_with_elapsed_time_and_eta(monkeypatch):
    monkeypatch.setenv("POCKETLEARN_PROGRESS_EVERY", "0")
    out, console = _log()
    with progress_bars(TextColumn("{task.description}"), BarColumn(), TextColumn("loss {task.fields[loss]:.2f}"),
                       console=console) as bars:
        assert isinstance(bars, PlainProgress)
        task = bars.add_task("training", total=4, loss=float("nan"))
        for step in range(1, 5):
            time.sleep(0.01)
            bars.update(task, completed=step, loss=1.0 / step)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert lines[0].startswith("training: 1/4 (25%), 0 s elapsed, ETA ") and lines[0].endswith("loss 1.00")
    assert lines[-1] == "training: 4/4 (100%), 0 s elapsed, done, loss 0.25"
    assert "\x1b" not in out.getvalue()


def test_lines_are_spaced_out_but_the_last_one_is_always_said(monkeypatch):
    monkeypatch.setenv("POCKETLEARN_PROGRESS_EVERY", "3600")
    out, console = _log()
    with progress_bars(console=console) as bars:
        task = bars.add_task("rounds", total=100)
        for _ in range(100):
            bars.advance(task)
    assert out.getvalue().splitlines() == ["rounds: 100/100 (100%), 0 s elapsed, done"]


def test_a_status_without_a_terminal_says_when_it_starts_and_how_it_ended():
    out, console = _log()
    with working(console, "converting") as status:
        status.update("converting: weights")
    try:
        with working(console, "exporting"):
            raise ValueError("bad")
    except ValueError:
        pass
    assert out.getvalue().splitlines() == ["converting …", "converting: weights (0 s elapsed)",
                                           "converting: weights: done in 0 s", "exporting …",
                                           "exporting: stopped after 0 s"]


def test_durations_read_like_a_person_writes_them():
    assert [duration(s) for s in (None, 4.4, 75.2, 3 * 3600 + 125)] == ["?", "4 s", "1 min 15 s", "3 h 02 min"]


def test_in_a_terminal_the_live_bar_stays():
    from rich.progress import Progress

    assert type(progress_bars(console=Console(force_terminal=True))) is Progress


def test_a_status_line_in_a_log_has_no_markup():
    out, console = _log()
    with working(console, "measuring [bold]lora[/] on smollm2"):
        pass
    assert out.getvalue().splitlines()[0] == "measuring lora on smollm2 …"
