"""The training step exported to ExecuTorch vs the same step in eager PyTorch: .pte size, peak memory, step time.

    python benchmarks/export.py            # 4-9 min on 2 shared cores: results/export.{json,md}, docs/export.md
    python benchmarks/export.py --quick    # MLP and CNN only, fewer steps: writes results/export-quick.*

Each (model, runtime) runs in a fresh process, one thread. The child imports torch, pocketlearn's methods and
the ExecuTorch runtime (both variants import the same modules), builds its batches, then records its RSS as
the baseline; peak = VmHWM during the measured steps (reset after one warm-up step) − baseline, less the
shared-library pages the first step faults in — as pocketlearn.memory.measure does for every method. Weights,
gradients, optimizer state, activations and ExecuTorch's planned memory all count. Both runtimes start from the
program's own initial weights and see the same batches, so their losses must agree (the last column). A model
whose step does not export is reported with its error, not left out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from harness import Bench, parser
from pocketlearn.devices import format_bytes
from pocketlearn.errors import PocketlearnError
from pocketlearn.memory.measure import _MALLOC_ENV
from pocketlearn.progress import working

console = Console()


@dataclass(frozen=True)
class Case:
    model: str
    batch: int
    method: str = "backprop"
    options: dict[str, Any] = field(default_factory=lambda: {"lr": 0.05})
    seq_len: int | None = None


CASES = [Case("mlp", 32), Case("cnn", 32), Case("tiny-gpt", 8, seq_len=64), Case("keyboard-gpt", 8, seq_len=24),
         Case("keyboard-gpt", 8, "lora", {"lr": 0.05, "rank": 8, "train_head": False}, seq_len=24)]
QUICK = CASES[:2]


@dataclass
class Row:
    model: str
    method: str
    batch: int
    params: int = 0
    trainable: int = 0
    pte_bytes: int = 0
    planned_bytes: int = 0  # the runtime's arena for the step, as the program declares it
    export_seconds: float = 0.0
    eager: dict[str, Any] = field(default_factory=dict)  # peak_bytes, seconds_per_step, losses
    executorch: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def export_case(case: Case, folder: Path) -> tuple[Row, Path | None]:
    from pocketlearn.export import DeviceTrainer, export_training

    row = Row(case.model, case.method, case.batch)
    program = folder / f"{case.model}-{case.method}.pte"
    start = time.perf_counter()
    try:
        info = export_training(case.model, program, method=case.method, options=case.options,
                               batch_size=case.batch, seq_len=case.seq_len)
    except PocketlearnError as err:
        row.error = f"export failed: {err}"
        return row, None
    row.export_seconds = time.perf_counter() - start
    row.pte_bytes, row.planned_bytes = program.stat().st_size, info.extra["planned_bytes"]
    state = DeviceTrainer(program).state_dict()
    row.params = sum(v.numel() for v in state.values())
    row.trainable = sum(state[k].numel() for k in info.trainable)
    torch.save(state, folder / f"{program.stem}.init.pt")  # the eager child starts from the same weights
    return row, program


def run_child(runtime: str, case: Case, program: Path, steps: int) -> dict[str, Any]:
    job = json.dumps({"runtime": runtime, "case": asdict(case), "program": str(program), "steps": steps})
    done = subprocess.run([sys.executable, __file__, "--child", job], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **_MALLOC_ENV, "OMP_NUM_THREADS": "1"}, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": f"{runtime} child died ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


def child(job: dict[str, Any]) -> dict[str, Any]:
    """One variant in this fresh process: import everything, baseline, warm-up step, measured steps."""
    torch.set_num_threads(1)
    import warnings

    from pocketlearn.export.runtime import DeviceTrainer
    from pocketlearn.memory import rss
    from pocketlearn.memory.measure import _import_everything
    from pocketlearn.methods import make_method

    case, steps = Case(**job["case"]), job["steps"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from executorch.extension.training import get_sgd_optimizer  # noqa: F401 - import-matched baseline
    build = _import_everything(case.model, case.method)
    from pocketlearn.models import get_model_spec

    spec = get_model_spec(case.model)
    batches = [tuple(t.contiguous() for t in spec.example_batch(case.batch, case.seq_len, seed=i))
               for i in range(steps + 1)]
    rss.release_free_memory()
    baseline, baseline_code = rss.current_rss(), rss.library_rss()
    if job["runtime"] == "executorch":
        step = DeviceTrainer(job["program"]).step
    else:
        method = make_method(case.method, build(), **case.options)
        method.model.load_state_dict(torch.load(job["program"].replace(".pte", ".init.pt"), weights_only=True))
        step = method.step
    losses = [step(batches[0])]  # warm-up: the runtime plans its memory, the optimizer makes its state
    rss.reset_peak()
    times = []
    for batch in batches[1:]:
        start = time.perf_counter()
        losses.append(step(batch))
        times.append(time.perf_counter() - start)
    peak = rss.peak_rss() - (rss.library_rss() - baseline_code)
    return {"peak_bytes": peak - baseline, "seconds_per_step": statistics.median(times), "losses": losses}


def markdown(rows: list[Row], header: str) -> str:
    lines = [header, "", "| model | method | batch | params (trainable) | .pte | export | ET planned | eager peak "
             "| ExecuTorch peak | ET / eager peak | eager step | ET step | ET / eager time | max \\|Δloss\\| |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        head = f"| {r.model} | {r.method} | {r.batch} |"
        problem = r.error or r.eager.get("error") or r.executorch.get("error")
        if problem:
            lines.append(f"{head} {r.params:,} ({r.trainable:,}) | | | | | | | | | | {problem} |")
            continue
        e, x = r.eager, r.executorch
        delta = max(abs(a - b) for a, b in zip(e["losses"], x["losses"], strict=True))
        lines.append(
            f"{head} {r.params:,} ({r.trainable:,}) | {format_bytes(r.pte_bytes)} | {r.export_seconds:.0f} s | "
            f"{format_bytes(r.planned_bytes)} | {format_bytes(e['peak_bytes'])} | {format_bytes(x['peak_bytes'])} | "
            f"{x['peak_bytes'] / e['peak_bytes']:.2f}× | {1e3 * e['seconds_per_step']:.1f} ms | "
            f"{1e3 * x['seconds_per_step']:.1f} ms | {x['seconds_per_step'] / e['seconds_per_step']:.2f}× | "
            f"{delta:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    cli = parser(__doc__, "MLP and CNN only, fewer steps (CI)")
    cli.add_argument("--child", help=argparse.SUPPRESS)
    args = cli.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    start, steps, load = time.time(), 3 if args.quick else 5, os.getloadavg()[0]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="pocketlearn-export-") as tmp, working(console, "exporting") as status:
        for case in QUICK if args.quick else CASES:
            status.update(f"exporting {case.model} ({case.method})")
            row, program = export_case(case, Path(tmp))
            if program is not None:
                for runtime in ("eager", "executorch"):
                    status.update(f"measuring {case.model} ({case.method}) in {runtime}")
                    setattr(row, runtime, run_child(runtime, case, program, steps))
            rows.append(row)
    header = (f"Measured by `python benchmarks/export.py{' --quick' if args.quick else ''}` in "
              f"{time.time() - start:.0f} s: one thread, {steps} steps after a warm-up, SGD; peak = RSS above an "
              f"import-matched baseline, in a fresh process per cell. Load average {load:.1f} → "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: above ~1 per core, step times are noisy.")
    table = markdown(rows, header)
    Bench("export", args.quick).publish([asdict(r) for r in rows], table)
    print(table)


if __name__ == "__main__":
    main()
