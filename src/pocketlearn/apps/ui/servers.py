"""Local web applications from PyPI, started on 127.0.0.1 for a crawl and stopped after it.

Unlike the documentation apps, these are applications whose controls are drawn by scripts (TensorBoard's Angular
components, Optuna Dashboard's React ones, Datasette's column menus, click handlers on plain elements), the
interfaces where a rule reading the DOM's links and form controls misses what is tappable. Each is started with
content made here from a fixed seed, so every crawl sees the same screens, on a free port that the fence
(:class:`~pocketlearn.apps.ui.fence.Fence`) then admits.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pocketlearn.apps.ui.corpus import App, debian_apps
from pocketlearn.apps.ui.fence import Fence
from pocketlearn.errors import ConfigError
from pocketlearn.federated.flower.launch import stop_trees

READY_S = 60.0  # a server that does not answer within this is reported, with its log


@dataclass(frozen=True)
class LocalApp:
    """How to start one: the module it needs (and the extra that installs it), its content, its command, its views."""

    module: str
    extra: str
    make_content: Callable[[Path], None]
    command: Callable[[Path, int], list[str]]
    routes: tuple[str, ...]  # the views crawled, as pages (a single-page app's routes)


def _tensorboard_logs(folder: Path) -> None:
    """Three training runs' scalars, histograms, images and text, from a fixed seed."""
    import numpy as np
    import torch
    from torch.utils.tensorboard import SummaryWriter

    rng = np.random.default_rng(0)
    for run, lr in (("sgd-0.1", 0.1), ("sgd-0.01", 0.01), ("adam-0.001", 0.001)):
        with SummaryWriter(str(folder / run)) as writer:
            for step in range(0, 200, 5):
                loss = 2.3 * np.exp(-step * lr / 4) + rng.normal(0, 0.05)
                writer.add_scalar("train/loss", loss, step)
                writer.add_scalar("train/accuracy", 1 - loss / 2.5, step)
                writer.add_scalar("eval/accuracy", 1 - loss / 2.4 + rng.normal(0, 0.02), step)
                if step % 40 == 0:
                    writer.add_histogram("weights/layer1", torch.from_numpy(rng.normal(0, 1 - step / 400, 500)), step)
                    writer.add_image("samples", torch.from_numpy(rng.random((3, 32, 32))), step)
            writer.add_text("config", f"optimizer **{run.split('-')[0]}**, learning rate {lr}", 0)


def _optuna_studies(folder: Path) -> None:
    """Two hyperparameter searches (TPE, fixed seeds) in a SQLite file: the dashboard's studies."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder.mkdir(parents=True)
    storage = f"sqlite:///{folder / 'studies.sqlite3'}"
    for seed, (name, trials) in enumerate((("cnn-fashion-mnist", 40), ("keyboard-gpt", 25))):
        study = optuna.create_study(study_name=name, storage=storage, sampler=optuna.samplers.TPESampler(seed=seed))

        def loss(trial: optuna.Trial) -> float:
            lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
            width = trial.suggest_int("width", 16, 256, log=True)
            sgd = trial.suggest_categorical("optimizer", ["sgd", "adamw"]) == "sgd"
            for epoch in range(5):
                trial.report(abs(math.log10(lr) + 2) / (epoch + 1) + 4 / width, epoch)
            return abs(math.log10(lr) + 2) / 5 + 4 / width + 0.05 * sgd

        study.optimize(loss, n_trials=trials)


def _optuna_dashboard(folder: Path, port: int) -> list[str]:
    serve = ("import sys, optuna_dashboard; "
             "optuna_dashboard.run_server(sys.argv[1], host='127.0.0.1', port=int(sys.argv[2]))")
    return [sys.executable, "-c", serve, f"sqlite:///{folder / 'studies.sqlite3'}", str(port)]


def _experiments_database(folder: Path) -> None:
    """Training runs and the devices they ran on, from a fixed seed, in a SQLite file: Datasette's tables."""
    import sqlite3

    import numpy as np

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    with sqlite3.connect(folder / "experiments.db") as db:
        db.execute("CREATE TABLE devices (name TEXT PRIMARY KEY, memory_mib INTEGER, cores INTEGER)")
        devices = [("phone-1g", 1024, 8), ("mcu-512k", 0, 1), ("laptop-16g", 16384, 8), ("pi-4g", 4096, 4)]
        db.executemany("INSERT INTO devices VALUES (?, ?, ?)", devices)
        db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, model TEXT, method TEXT, lr REAL, rounds INTEGER, "
                   "accuracy REAL, peak_mib REAL, device TEXT REFERENCES devices(name))")
        for i in range(60):
            model, method = rng.choice(["cnn", "digits-mlp", "keyboard-gpt"]), rng.choice(["backprop", "lora", "mezo"])
            db.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (i + 1, str(model), str(method), float(10 ** rng.uniform(-4, -1)), int(rng.integers(5, 50)),
                        round(float(rng.uniform(0.5, 0.95)), 4), round(float(rng.uniform(3, 400)), 1),
                        devices[int(rng.integers(len(devices)))][0]))


LOCAL_APPS: dict[str, LocalApp] = {
    "tensorboard": LocalApp(
        "tensorboard", "tracking", _tensorboard_logs,
        lambda folder, port: [sys.executable, "-m", "tensorboard.main", "--logdir", str(folder), "--host",
                              "127.0.0.1", "--port", str(port), "--load_fast", "false"],
        ("#timeseries", "#scalars", "#images", "#histograms", "#distributions", "#text")),
    "optuna": LocalApp(
        "optuna_dashboard", "ui", _optuna_studies, _optuna_dashboard,
        ("dashboard/studies/1", "dashboard", "dashboard/studies/1/analytics", "dashboard/studies/1/trialTable",
         "dashboard/studies/2", "dashboard/compare-studies")),
    "datasette": LocalApp(
        "datasette", "ui", _experiments_database,
        lambda folder, port: [sys.executable, "-m", "datasette", "serve", str(folder / "experiments.db"), "--host",
                              "127.0.0.1", "--port", str(port)],
        ("experiments/runs", "experiments", "experiments/runs?_sort_desc=accuracy", "experiments/runs/1",
         "experiments/devices", "-/metadata")),
}


def installed_local_apps() -> list[str]:
    """The local apps whose module is installed here."""
    return [name for name, app in LOCAL_APPS.items() if importlib.util.find_spec(app.module) is not None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path, name: str) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
    raise ConfigError(f"the local app {name} did not start on 127.0.0.1:{port} within {READY_S:.0f} s; its log "
                      f"({log}) ends:\n{tail}")


@contextmanager
def local_apps(names: Sequence[str], folder: Path) -> Iterator[list[App]]:
    """Start ``names`` on free 127.0.0.1 ports with their content under ``folder``; stop them all on exit."""
    unknown = [n for n in names if n not in LOCAL_APPS]
    if unknown:
        raise ConfigError(f"unknown local apps {unknown}; choose from {sorted(LOCAL_APPS)}")
    missing = [n for n in names if n not in installed_local_apps()]
    if missing:
        extras = sorted({LOCAL_APPS[n].extra for n in missing})
        raise ConfigError(f"the local apps {missing} are not installed: pip install 'pocketlearn[{','.join(extras)}]'")
    started: list[subprocess.Popen[bytes]] = []
    try:
        apps = []
        for name in names:
            spec, content, port = LOCAL_APPS[name], folder / name / "content", _free_port()
            content.parent.mkdir(parents=True, exist_ok=True)
            if not content.is_dir():  # made aside, then renamed: a killed start leaves no half-made content
                scratch = folder / name / "content.partial"
                shutil.rmtree(scratch, ignore_errors=True)
                spec.make_content(scratch)
                scratch.rename(content)
            log = folder / name / "server.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(spec.command(content, port), stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
            started.append(proc)
            _wait_ready(port, proc, log, name)
            apps.append(App(name, content, spec.routes[0], base=f"http://127.0.0.1:{port}/", routes=spec.routes))
        yield apps
    finally:
        stop_trees(started, grace_s=2.0)


@contextmanager
def running_corpus(names: Sequence[str] | None, folder: Path) -> Iterator[tuple[list[App], Fence]]:
    """The apps ``names`` (None: every installed one), local ones started, and the fence that admits them all."""
    local = installed_local_apps() if names is None else [n for n in names if n in LOCAL_APPS]
    documentation = debian_apps(None if names is None else [n for n in names if n not in LOCAL_APPS])
    with local_apps(local, folder) as served:
        ports = [int(urlsplit(a.base).port or 80) for a in served]
        yield documentation + served, Fence([a.root for a in documentation], ports=ports)


def servers_folder(crops: Path) -> Path:
    """Where a crawl into ``crops`` keeps its local apps' content and logs (beside the crops, not among them)."""
    return crops.with_name(crops.name + "-servers")
