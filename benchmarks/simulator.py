"""Federated simulation: pocketlearn against the FL framework anchors (plain PyTorch, pfl-research, Flower).

    make anchors-venv                           # once: the anchors' own venv (.anchors-venv, ~1.6 GB)
    python benchmarks/simulator.py              # full: 3 reps x 5 workloads x {plain, pfl, flower, pocketlearn}
    python benchmarks/simulator.py --quick      # 1 rep, digits only, no Flower (CI); writes results/simulator-quick.*

Workloads: `small` and `large` are the anchors' own (FedAvg, sklearn digits, MLP 64-128-10, Dirichlet(0.5) over
100 / 1000 clients); the anchor scripts live in the anchors directory (--anchors, default ../shared/anchors next to
this repository; see its README.md and RESULTS.md). `cnn` is pocketlearn's CNN on Fashion-MNIST with a strongly
skewed Dirichlet(0.1) split (clients of a few dozen to a few thousand samples), `cnn-lognormal` the same with
IID labels and LogNormal(0, 1.5) client sizes, `keyboard` the keyboard's next-word GPT on Shakespeare roles (a
natural split) from scratch; the same anchor scripts run them through benchmarks/anchor_workloads/workload.py,
and pocketlearn runs the CNN ones in fp32 and in bf16 (`pocketlearn-bf16`).
Every run is one fresh command measured from outside by the anchors' measure.py (wall
time from launch to exit, peak RSS summed over the whole process tree) and from inside by the command's own
result JSON (rounds time, accuracy). The anchors run in .anchors-venv, pocketlearn in .venv. Runs are interleaved:
each repetition runs every (config, variant) once, with the variant order rotated from one repetition to the next.
All runs go to results/simulator[-quick].json, the medians to results/simulator[-quick].md (and, in full mode,
to the docs between the simulator markers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness import Bench, goal, goal_table, parser
from pocketlearn.progress import progress_bars

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ANCHORS = REPO.parent / "shared" / "anchors"
DEFAULT_ANCHORS_VENV = REPO / ".anchors-venv"

# The pocketlearn variant's command line. {repo}, {config} and {out} are filled in per run; the command must write
# a result JSON to {out} with at least RESULT_KEYS (the keys the anchors write via workload.write_result).
POCKETLEARN_CMD = ("{repo}/.venv/bin/pocketlearn fed simulate benchmarks/configs/anchor-{config}.toml "
                   "--out {out} --quiet --fresh")
RESULT_KEYS = ("accuracy", "train_s", "updates_per_s", "round_times", "rounds", "clients_per_round")

CONFIGS = ("small", "large", "cnn", "cnn-lognormal", "keyboard")
QUICK_CONFIGS = ("small", "large")
VARIANTS = ("plain", "pfl", "flower", "pocketlearn", "pocketlearn-bf16")
QUICK_VARIANTS = ("plain", "pfl", "pocketlearn")
ANCHOR_VARIANTS = ("plain", "pfl", "flower")
MIXED_PRECISION_CONFIGS = ("cnn", "cnn-lognormal")  # pocketlearn-bf16 runs these only
# pocketlearn's own workloads, as benchmarks/anchor_workloads/workload.py names them (POCKETLEARN_BENCH_WORKLOAD)
OWN_WORKLOADS = {"cnn": "dirichlet", "cnn-lognormal": "lognormal", "keyboard": "keyboard"}
TEST_SAMPLES = {"small": 360, "large": 360, "cnn": 10_000, "cnn-lognormal": 10_000}  # keyboard's: its test tokens
EXPECTED_ACCURACY = {"small": 265 / 360, "large": 155 / 360}  # anchors' RESULTS.md
# fp32 results equal the anchors' within float rounding: one test sample on digits. On our workloads 20 rounds
# amplify rounding differences (the anchors disagree among themselves by tens of samples on the CNN): there the
# tolerance is the anchors' own spread in the same run, and at least the value below
ACCURACY_TOLERANCE = {"small": 1 / 360 + 1e-9, "large": 1 / 360 + 1e-9, "cnn": 10 / 10_000 + 1e-9,
                      "cnn-lognormal": 10 / 10_000 + 1e-9, "keyboard": 1e-3}
SPREAD_TOLERANCE = tuple(OWN_WORKLOADS)
# bf16's final accuracy within half a point of fp32's (+1e-9: a difference of sample counts, not float rounding)
BF16_ACCURACY_TOLERANCE = 0.005 + 1e-9
WORKLOAD = REPO / "benchmarks" / "anchor_workloads" / "workload.py"

console = Console()


@dataclass
class Run:
    """One measured command: outside view (measure.py) merged with the command's own result JSON."""

    config: str
    variant: str
    rep: int
    rc: int
    wall_s: float | None = None
    peak_tree_rss_mb: float | None = None
    peak_tree_pss_mb: float | None = None
    peak_procs: int | None = None
    accuracy: float | None = None
    train_s: float | None = None
    updates_per_s: float | None = None
    updates_per_wall_s: float | None = None
    rounds: int | None = None
    clients_per_round: int | None = None
    round_times: list[float] = field(default_factory=list)
    leftover: list[str] = field(default_factory=list)
    error: str = ""
    log: str | None = None  # kept only for failed runs
    raw: dict[str, Any] = field(default_factory=dict)  # everything measure.py wrote (minus round_times)

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.error


# ----------------------------------------------------------------------------------------------------- commands
def anchors_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def check_setup(anchors: Path, venv: Path) -> None:
    """Fail early, with the fix, when the anchors or their venv are missing."""
    missing = [n for n in ("measure.py", "run_plain.py", "run_pfl.py", "run_flower.py") if not (anchors / n).is_file()]
    if missing:
        sys.exit(f"error: {anchors} is not the anchors directory (missing {', '.join(missing)}); pass --anchors DIR")
    if not os.access(anchors_python(venv), os.X_OK):
        sys.exit(f"error: the anchors venv is missing ({anchors_python(venv)} not found).\n"
                 f"Build it with `make anchors-venv` (from {REPO}), or pass --anchors-venv DIR.")


def variant_command(variant: str, config: str, out: Path, anchors: Path, venv: Path, pocketlearn_cmd: str) -> list[str]:
    """The command line of one variant; each writes its result JSON to `out`."""
    if variant.startswith("pocketlearn"):
        bf16 = ["--set", "client.precision=bf16"] if variant == "pocketlearn-bf16" else []
        return [arg.format(repo=REPO, config=config, out=out) for arg in shlex.split(pocketlearn_cmd)] + bf16
    script = {"plain": ["run_plain.py"], "pfl": ["run_pfl.py"], "flower": ["run_flower.py", "--num-cpus", "2"]}
    name, *extra = script[variant]
    return [str(anchors_python(venv)), str(anchors / name), *extra, "--config", config, "--out", str(out)]


def measured_command(cmd: list[str], run_dir: Path, anchors: Path, venv: Path) -> list[str]:
    """`cmd` wrapped by the anchors' measure.py, as their bench.py does."""
    return [str(anchors_python(venv)), str(anchors / "measure.py"), "--out", str(run_dir / "measure.json"),
            "--inner-out", str(run_dir / "result.json"), "--log", str(run_dir / "run.log"), "--", *cmd]


# ----------------------------------------------------------------------------------------------------- running
def run_in_group(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run `cmd` in its own process group; on timeout or Ctrl-C end that group (only it)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        end_group(proc)
        return -1, f"timed out after {timeout:.0f} s"
    except BaseException:
        end_group(proc)
        raise


def end_group(proc: subprocess.Popen[str]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def load_run(config: str, variant: str, rep: int, rc: int, output: str, run_dir: Path) -> Run:
    """Turn measure.py's merged JSON into a Run (error set when anything is missing)."""
    measured = run_dir / "measure.json"
    if not measured.exists():
        return Run(config, variant, rep, rc, error=f"measure.py wrote nothing (rc {rc}): {output.strip()[-500:]}")
    raw = json.loads(measured.read_text())
    run = Run(config, variant, rep, rc=raw.get("rc", rc), round_times=raw.pop("round_times", []), raw=raw,
              leftover=raw.get("leftover", []))
    for key in ("wall_s", "peak_tree_rss_mb", "peak_tree_pss_mb", "peak_procs", "accuracy", "train_s",
                "updates_per_s", "rounds", "clients_per_round"):
        setattr(run, key, raw.get(key))
    lacking = [k for k in RESULT_KEYS if k not in raw and not (k == "round_times" and run.round_times)]
    if run.rc != 0:
        run.error = f"exit status {run.rc}"
    elif lacking:
        run.error = f"result JSON lacks {', '.join(lacking)}"
    else:
        run.updates_per_wall_s = run.rounds * run.clients_per_round / run.wall_s
    return run


def workload_anchors(anchors: Path, scratch: Path, configs: list[str]) -> dict[str, tuple[Path, dict[str, str]]]:
    """For each of pocketlearn's own workloads: the anchors' scripts beside its workload module, and its env.

    The scripts import ``workload`` from their own folder, so this folder runs them on these workloads. The data
    is written once as pocketlearn loads it (the anchors' venv has no pocketlearn; the keyboard's model comes
    from pocketlearn's source, which needs only torch).
    """
    folder = scratch / "own-anchors"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("run_plain.py", "run_pfl.py", "measure.py"):
        (folder / name).symlink_to(anchors / name)
    # (a copy: Ray's workers import from the real folder of the driver's script, so a link would give them the
    # shared workload)
    shutil.copy2(anchors / "run_flower.py", folder / "run_flower.py")
    (folder / "shared_workload.py").symlink_to(anchors / "workload.py")
    (folder / "workload.py").symlink_to(WORKLOAD)
    out = {}
    for config in configs:
        data = scratch / f"{config}.npz"
        write_data(config, data)
        out[config] = (folder, {"POCKETLEARN_BENCH_DATA": str(data), "PYTHONPATH": str(REPO / "src"),
                                "POCKETLEARN_BENCH_WORKLOAD": OWN_WORKLOADS[config]})
    return out


def write_data(config: str, path: Path) -> None:
    """The workload's data, and for a natural split its clients, as pocketlearn's own run loads them."""
    from pocketlearn.federated.config import load_config
    from pocketlearn.federated.experiment import load_federated_data

    data = load_federated_data(load_config(REPO / "benchmarks" / "configs" / f"anchor-{config}.toml"))
    split = data.in_memory("the anchors' copy of a workload")
    np.savez(path, x=split.x.numpy(), y=split.y.numpy(), xt=data.x_test.numpy(), yt=data.y_test.numpy(),
             indices=np.concatenate(split.indices).astype(np.int64),
             offsets=np.concatenate([[0], np.cumsum(split.sizes)]))
    TEST_SAMPLES.setdefault(config, int(data.y_test.numel()))


def run_one(config: str, variant: str, rep: int, args: argparse.Namespace, scratch: Path) -> Run:
    run_dir = scratch / f"{config}-{variant}-r{rep}"
    shutil.rmtree(run_dir, ignore_errors=True)
    tmp = run_dir / "tmp"  # torch and other temp files: kept per run (as the anchors' bench.py does), removed after
    tmp.mkdir(parents=True)
    # Ray would put its session dir under TMPDIR too, but its AF_UNIX socket paths must stay under 107 bytes,
    # which a path inside the repository can exceed (then Ray fails and Flower hangs): give Ray a short dir.
    ray_tmp = Path(tempfile.mkdtemp(prefix="plsim-", dir="/tmp"))
    env = dict(os.environ, TMPDIR=str(tmp), RAY_TMPDIR=str(ray_tmp), PYTHONDONTWRITEBYTECODE="1")
    anchors = args.anchors
    if config in args.workloads:
        anchors, extra = args.workloads[config]
        env.update(extra)
    cmd = variant_command(variant, config, run_dir / "result.json", anchors, args.anchors_venv, args.pocketlearn_cmd)
    rc, output = run_in_group(measured_command(cmd, run_dir, anchors, args.anchors_venv), env, args.timeout)
    run = load_run(config, variant, rep, rc, output, run_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    if run.ok:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        run.log = str((run_dir / "run.log").relative_to(REPO))
        run.error += "\n" + tail(run_dir / "run.log")
    return run


def schedule(configs: list[str], variants: list[str], reps: int) -> list[tuple[int, str, str]]:
    """(rep, config, variant) in run order: per repetition every cell once, variant order rotated."""
    out = []
    for rep in range(reps):
        k = rep % len(variants)
        order = variants[k:] + variants[:k]
        out += [(rep, config, v) for config in configs for v in order if runs_on(v, config)]
    return out


def runs_on(variant: str, config: str) -> bool:
    return variant != "pocketlearn-bf16" or config in MIXED_PRECISION_CONFIGS


def run_all(args: argparse.Namespace, scratch: Path) -> list[Run]:
    plan = schedule(args.configs, args.variants, args.reps)
    args.workloads = workload_anchors(args.anchors, scratch, [c for c in args.configs if c in OWN_WORKLOADS])
    runs: list[Run] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with progress_bars(*columns, console=console) as progress:
        task = progress.add_task("runs", total=len(plan))
        for i, (rep, config, variant) in enumerate(plan):
            progress.update(task, description=f"rep {rep + 1}/{args.reps} {config:5} {variant:16}")
            run = run_one(config, variant, rep, args, scratch)
            runs.append(run)
            progress.console.print(describe(run))
            progress.advance(task)
            if i + 1 < len(plan):
                time.sleep(args.pause)
    return runs


def describe(run: Run) -> str:
    head = f"rep {run.rep + 1} {run.config:5} {run.variant:16}"
    if not run.ok:
        return f"[red]✗ {head} {run.error.strip()}[/]" + (f" (log: {run.log})" if run.log else "")
    return (f"[green]✓[/] {head} wall {run.wall_s:5.1f} s  rounds {run.train_s:6.2f} s  "
            f"{run.updates_per_s:8.1f} updates/s  RSS {run.peak_tree_rss_mb:5.0f} MB  acc {run.accuracy:.4f}")


# ----------------------------------------------------------------------------------------------------- summary
COLUMNS = (  # (Run attribute, header, format)
    ("wall_s", "total wall s", "{:.1f}"),
    ("train_s", "rounds s", "{:.2f}"),
    ("updates_per_s", "updates/s (rounds)", "{:.1f}"),
    ("updates_per_wall_s", "updates/s (wall)", "{:.1f}"),
    ("peak_tree_rss_mb", "peak tree RSS MB", "{:.0f}"),
    ("accuracy", "test acc", "{:.4f}"),
)


def median(runs: list[Run], config: str, variant: str, key: str) -> float | None:
    values = [getattr(r, key) for r in runs if r.config == config and r.variant == variant and r.ok]
    return statistics.median(values) if values else None


def summary(runs: list[Run], configs: list[str], variants: list[str]) -> list[dict[str, Any]]:
    rows = []
    for config in configs:
        for variant in (v for v in variants if runs_on(v, config)):
            cell = [r for r in runs if r.config == config and r.variant == variant]
            rows.append({"config": config, "variant": variant, "ok": sum(r.ok for r in cell), "runs": len(cell),
                         **{key: median(runs, config, variant, key) for key, _, _ in COLUMNS}})
    return rows


def cells(row: dict[str, Any]) -> list[str]:
    return [row["variant"], f"{row['ok']}/{row['runs']}"] + [
        "n/a" if row[key] is None else fmt.format(row[key]) for key, _, fmt in COLUMNS]


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


PFL_FACTOR = {"small": 10, "large": 30}  # the digits MLP's lead over pfl-research, updates/s
# each workload's model, one example's shape, the batch size and the clients of a round (for the FLOP/s goal)
ROUND_BATCH = {"small": ("digits-mlp", (64,), 16, 10), "large": ("digits-mlp", (64,), 16, 100),
               "cnn": ("cnn", (1, 28, 28), 32, 10), "cnn-lognormal": ("cnn", (1, 28, 28), 32, 10),
               "keyboard": ("keyboard-gpt", (24,), 16, 10)}
FLOPS_SHARE = 0.7  # achieved FLOP/s against the same layers as one model over the round's whole batch
REFERENCE_BLOCKS = 5  # whole_batch_flops times this many blocks of 10 steps and keeps the fastest


def whole_batch_flops(config: str, precision: str, round_samples: float) -> tuple[float, float]:
    """(FLOPs of one example's step, FLOP/s of the workload's model stepping on a round's whole batch at once).

    The reference is the machine's practical limit for this arithmetic: one model (channels last), one batch
    of the round's clients' batches put together, SGD, in ``precision``, timed after a warm-up. That batch is
    clients x batch size examples, or the round's real samples where its clients hold fewer (the digits'
    ``large``: 100 clients of ~1.4 samples make a batch of ~144, not 1,600). Timed as the fastest of
    ``REFERENCE_BLOCKS`` blocks of 10 steps: one block of 30 steps varied by 30% from run to run on a shared
    machine, and the goal moved with it. The heap is kept between steps, as the simulator keeps it
    (:mod:`pocketlearn.memory.allocator`): the CNN's reference varied from 76 to 150 GFLOP/s without.
    """
    import torch

    from pocketlearn.federated.population import train_flops_per_sample
    from pocketlearn.memory.allocator import keep_freed_memory
    from pocketlearn.methods.base import autocast, cross_entropy
    from pocketlearn.models import get_model_spec

    keep_freed_memory()
    name, shape, batch, clients = ROUND_BATCH[config]
    spec = get_model_spec(name)
    model = spec.build().to(memory_format=torch.channels_last)
    examples = max(1, min(clients * batch, round(round_samples)))
    x, y = spec.example_batch(examples, seq_len=shape[0] if spec.task == "lm" else None)
    x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    per_example = train_flops_per_sample(model, x)
    sgd = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        with autocast(precision):  # type: ignore[arg-type]
            out = model(x)
        cross_entropy(out.float(), y).backward()
        sgd.step()
        sgd.zero_grad()

    for _ in range(5):
        step()
    fastest, n = float("inf"), 10
    for _ in range(REFERENCE_BLOCKS):  # the fastest block: a limit is what the machine does at its best
        start = time.perf_counter()
        for _ in range(n):
            step()
        fastest = min(fastest, time.perf_counter() - start)
    return per_example, per_example * len(x) * n / fastest


def flops_goals(runs: list[Run], configs: list[str], variants: list[str]) -> list[dict[str, Any]]:
    """Achieved FLOP/s of each pocketlearn variant against :func:`whole_batch_flops` in the same precision."""
    out = []
    for config in configs:
        for variant in (v for v in ("pocketlearn", "pocketlearn-bf16") if v in variants and runs_on(v, config)):
            done = [r for r in runs if r.config == config and r.variant == variant and r.ok and r.train_s]
            if not done:
                continue
            round_samples = statistics.median(r.raw.get("client_steps", {}).get("samples", 0) / (r.rounds or 1)
                                              for r in done)
            per_example, limit = whole_batch_flops(config, "bf16" if variant.endswith("bf16") else "fp32",
                                                   round_samples)
            achieved = statistics.median(per_example * r.raw.get("client_steps", {}).get("samples", 0) / r.train_s
                                         for r in done)
            share = achieved / limit
            out.append(goal(f"FLOP/s: {variant} / one model over the round's whole batch ({limit / 1e9:.1f} GFLOP/s)",
                            share, f"≥ {FLOPS_SHARE}", share >= FLOPS_SHARE, config=config, unit="ratio"))
    return out



def goals(runs: list[Run], configs: list[str], variants: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(text: str, config: str, value: float | None, target: str, ok: bool, unit: str = "ratio") -> None:
        out.append(goal(text, value, target, value is not None and ok, config=config, unit=unit))

    for config in configs:
        mine = median(runs, config, "pocketlearn", "updates_per_s")
        speeds = {a: median(runs, config, a, "updates_per_s") for a in ANCHOR_VARIANTS if a in variants}
        if all(v is not None for v in speeds.values()) and len(speeds) == len(ANCHOR_VARIANTS):
            fastest = max(speeds, key=lambda a: speeds[a] or 0.0)
            r = ratio(mine, speeds[fastest])
            add(f"updates/s: pocketlearn / the fastest anchor ({fastest})", config, r, "≥ 1.25",
                r is not None and r >= 1.25)
        for anchor, factor in (("pfl", PFL_FACTOR.get(config)), ("flower", 100 if config in PFL_FACTOR else None)):
            if anchor in variants and factor is not None:
                r = ratio(mine, speeds.get(anchor))
                add(f"updates/s during rounds: pocketlearn / {anchor}", config, r, f"≥ {factor}",
                    r is not None and r >= factor)
        reference = anchor_accuracy(runs, config)
        if reference is not None:
            deltas = [abs(r.accuracy - reference) for r in runs if r.config == config and r.variant == "pocketlearn"
                      and r.ok]
            worst = max(deltas) if deltas else None
            n, tolerance = TEST_SAMPLES[config], accuracy_tolerance(runs, config)
            add(f"test accuracy: worst pocketlearn run vs anchors' {reference:.4f}", config, worst,
                f"≤ {tolerance * n:.0f}/{n}", worst is not None and worst <= tolerance, unit="accuracy")
        steps = [r.raw.get("client_steps", {}).get("computed_per_real") for r in runs
                 if r.config == config and r.variant.startswith("pocketlearn") and r.ok]
        worst_steps = max((s for s in steps if s is not None), default=None)
        add("client-steps computed / real (worst pocketlearn run)", config, worst_steps, "≤ 1.1",
            worst_steps is not None and worst_steps <= 1.1)
        if runs_on("pocketlearn-bf16", config) and "pocketlearn-bf16" in variants:
            r = ratio(median(runs, config, "pocketlearn-bf16", "updates_per_s"), speeds.get("pfl"))
            add("updates/s: pocketlearn bf16 / pfl (fp32)", config, r, "≥ 2.5", r is not None and r >= 2.5)
            gap = ratio_gap(median(runs, config, "pocketlearn-bf16", "accuracy"),
                            median(runs, config, "pocketlearn", "accuracy"))
            add("test accuracy: bf16 vs fp32 (pocketlearn, medians)", config, gap,
                f"≤ {BF16_ACCURACY_TOLERANCE * TEST_SAMPLES[config]:.0f}/{TEST_SAMPLES[config]}",
                gap is not None and gap <= BF16_ACCURACY_TOLERANCE, unit="accuracy")
        if "pfl" in variants:
            for key, what in (("wall_s", "whole-command wall time"), ("peak_tree_rss_mb", "peak tree RSS")):
                r = ratio(median(runs, config, "pocketlearn", key), median(runs, config, "pfl", key))
                add(f"{what}: pocketlearn / pfl", config, r, "≤ 1", r is not None and r <= 1)
    return out


def ratio_gap(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else abs(a - b)


def accuracy_tolerance(runs: list[Run], config: str) -> float:
    """How far pocketlearn's accuracy may be from the anchors' (see ACCURACY_TOLERANCE)."""
    if config not in SPREAD_TOLERANCE:
        return ACCURACY_TOLERANCE[config]
    values = [r.accuracy for r in runs if r.config == config and r.variant in ANCHOR_VARIANTS and r.ok]
    spread = max(values) - min(values) if values else 0.0
    return max(ACCURACY_TOLERANCE[config], spread + 1e-9)


def anchor_accuracy(runs: list[Run], config: str) -> float | None:
    """The anchors' accuracy in this run (they all agree); RESULTS.md's value (if any) when no anchor ran."""
    values = [r.accuracy for r in runs if r.config == config and r.variant in ANCHOR_VARIANTS and r.ok]
    return statistics.median(values) if values else EXPECTED_ACCURACY.get(config)


def anchor_warnings(runs: list[Run]) -> list[str]:
    return [f"{r.variant} {r.config} rep {r.rep + 1}: accuracy {r.accuracy:.4f}, anchors' RESULTS.md has "
            f"{EXPECTED_ACCURACY[r.config]:.4f}" for r in runs if r.ok and r.variant in ANCHOR_VARIANTS
            and r.config in EXPECTED_ACCURACY and abs(r.accuracy - EXPECTED_ACCURACY[r.config]) > 1e-9]


def format_value(g: dict[str, Any]) -> str:
    if g["value"] is None:
        return "n/a"
    if g["unit"] == "accuracy":
        return f"{g['value']:.4f} ({g['value'] * TEST_SAMPLES[g['config']]:.0f} samples)"
    return f"{g['value']:.2f}×"


def markdown(rows: list[dict[str, Any]], goal_rows: list[dict[str, Any]], header: str) -> str:
    lines = [header]
    for config in dict.fromkeys(r["config"] for r in rows):
        lines += ["", f"**{config}**", "", "| variant | ok runs | " + " | ".join(c[1] for c in COLUMNS) + " |",
                  "|---|---|" + "---:|" * len(COLUMNS)]
        lines += ["| " + " | ".join(cells(r)) + " |" for r in rows if r["config"] == config]
    return "\n".join(lines) + "\n\n" + goal_table(goal_rows, format_value, columns=("config", "value", "target"))


def print_tables(rows: list[dict[str, Any]], goal_rows: list[dict[str, Any]]) -> None:
    for config in dict.fromkeys(r["config"] for r in rows):
        table = Table(title=f"{config}: medians", title_justify="left")
        for i, header in enumerate(["variant", "ok runs"] + [c[1] for c in COLUMNS]):
            table.add_column(header, justify="left" if i == 0 else "right", overflow="fold", no_wrap=i == 0)
        for r in rows:
            if r["config"] == config:
                table.add_row(*cells(r))
        console.print(table)
    table = Table(title="goals", title_justify="left")
    for header in ("goal", "config", "value", "target", "met"):
        table.add_column(header)
    for g in goal_rows:
        table.add_row(g["goal"], g["config"], format_value(g), g["target"],
                      "[green]met[/]" if g["met"] else "[bold red]NOT MET[/]")
    console.print(table)


# ----------------------------------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    cli = parser(__doc__, "1 repetition, no Flower (CI)")
    cli.add_argument("--reps", type=int, default=None,
                     help="repetitions (default 3; 1 with --quick); the docs are updated only with >= 3")
    cli.add_argument("--anchors", type=Path, default=DEFAULT_ANCHORS, help="anchors directory (%(default)s)")
    cli.add_argument("--anchors-venv", type=Path, default=DEFAULT_ANCHORS_VENV,
                     help="venv built by `make anchors-venv` (%(default)s)")
    cli.add_argument("--configs", nargs="+", choices=CONFIGS, default=None,
                     help="workloads (default: all; the digits ones with --quick)")
    cli.add_argument("--variants", nargs="+", choices=VARIANTS, default=None,
                     help="subset of variants (default: all; without flower with --quick)")
    cli.add_argument("--pocketlearn-cmd", default=POCKETLEARN_CMD,
                     help="pocketlearn command template with {repo} {config} {out} (default: %(default)s)")
    cli.add_argument("--pause", type=float, default=2.0, help="seconds between runs (%(default)s)")
    cli.add_argument("--timeout", type=float, default=300.0, help="seconds before a run is killed (%(default)s)")
    args = cli.parse_args()
    args.anchors, args.anchors_venv = args.anchors.resolve(), args.anchors_venv.absolute()
    args.reps = args.reps or (1 if args.quick else 3)
    args.variants = args.variants or list(QUICK_VARIANTS if args.quick else VARIANTS)
    args.configs = args.configs or list(QUICK_CONFIGS if args.quick else CONFIGS)
    args.partial = (args.configs != list(QUICK_CONFIGS if args.quick else CONFIGS)
                    or args.variants != list(QUICK_VARIANTS if args.quick else VARIANTS))
    return args


def metadata(args: argparse.Namespace, runs: list[Run], seconds: float, load: tuple[float, ...]) -> dict[str, Any]:
    anchor_versions = next((r.raw.get("versions") for r in runs if r.variant in ANCHOR_VARIANTS and r.ok), None)
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "seconds": seconds, "reps": args.reps,
            "quick": args.quick, "configs": args.configs, "variants": args.variants, "cpus": os.cpu_count(),
            "load_avg_at_start": load, "platform": platform.platform(), "anchors": str(args.anchors),
            "anchors_venv": str(args.anchors_venv), "pocketlearn_cmd": args.pocketlearn_cmd,
            "anchor_versions": anchor_versions}


def main() -> None:
    args = parse_args()
    check_setup(args.anchors, args.anchors_venv)
    if args.pocketlearn_cmd == POCKETLEARN_CMD and not (REPO / ".venv" / "bin" / "pocketlearn").exists():
        console.print("[yellow]warning: .venv/bin/pocketlearn not found; the pocketlearn runs will fail[/]")
    bench = Bench("simulator" + ("-partial" if args.partial else ""), args.quick, section="simulator")
    scratch = bench.path("-runs")  # per-run TMPDIR and logs; only failed runs' logs are kept
    shutil.rmtree(scratch, ignore_errors=True)
    load, start = os.getloadavg(), time.time()
    runs = run_all(args, scratch)
    seconds = time.time() - start
    if scratch.exists() and not any(scratch.iterdir()):
        scratch.rmdir()

    rows = summary(runs, args.configs, args.variants)
    goal_rows = goals(runs, args.configs, args.variants) + flops_goals(runs, args.configs, args.variants)
    default_reps = 1 if args.quick else 3
    flags = (" --quick" if args.quick else "") + ("" if args.reps == default_reps else f" --reps {args.reps}")
    header = (f"Measured by `python benchmarks/simulator.py{flags}` in {seconds:.0f} s on {os.cpu_count()} CPUs "
              f"(load average {load[0]:.1f} at start): medians of {args.reps} interleaved repetition(s). "
              "Wall time and peak RSS (summed over the process tree) measured from outside by the anchors' "
              "measure.py; rounds time and accuracy reported by each command.")
    table = markdown(rows, goal_rows, header)
    bench.publish({"meta": metadata(args, runs, seconds, load), "summary": rows, "goals": goal_rows,
                   "runs": [asdict(r) for r in runs]}, table, docs=not args.partial and args.reps >= 3)

    print_tables(rows, goal_rows)
    for warning in anchor_warnings(runs):
        console.print(f"[yellow]warning: {warning}[/]")
    missed = [f"{g['goal']} ({g['config']})" for g in goal_rows if not g["met"]]
    console.print(f"[bold]{len(goal_rows) - len(missed)}/{len(goal_rows)} goals met[/]; "
                  f"{sum(r.ok for r in runs)}/{len(runs)} runs ok; results in {bench.path('')}.{{json,md}}")


if __name__ == "__main__":
    main()
