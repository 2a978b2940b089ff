"""LLM fine-tuning on a budget phone: a 4-bit frozen base, lean backprop and MeZO, SmolLM2-135M and Gemma-3-270M.

    python benchmarks/llm_lean.py            # full run (~30-40 min on 2 cores): results/llm_lean.*, README "llm-lean"
    python benchmarks/llm_lean.py --quick    # SmolLM2 only, a few steps, for CI: results/llm_lean-quick.*
    python benchmarks/llm_lean.py --models smollm2-135m --no-federated

Memory cells: steps at batch 4 x 128 tokens, each in a fresh process (pocketlearn.memory.measure: VmHWM above
an import-matched baseline, memory-mapped weight pages included), 2 threads. Quality: held-out perplexity of a
Shakespeare user's last lines after the same number of steps, and perplexity against training seconds
(evaluation excluded) for 4-bit LoRA backprop and 4-bit MeZO, which runs several times more steps. Federated:
FedIT on the 4-bit base, every client a `phone-1g`. Every ratio and goal comes from this one run; a cell whose
model or option is not available is reported as such, and the goals that need it fail.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from pocketlearn.apps.llm import FederatedLLMConfig, find_user, run_federated, tokenize_user
from pocketlearn.apps.llm.federated import federated_users
from pocketlearn.devices import format_bytes, get_device
from pocketlearn.evaluate import batches_of, evaluate
from pocketlearn.memory.measure import measure
from pocketlearn.methods import make_method
from pocketlearn.methods.base import forward_loss
from pocketlearn.models import build_model, get_model_spec
from pocketlearn.models.pretrained import load_tokenizer
from readme_table import write_readme_section

RESULTS = Path(__file__).parent / "results"
USER = "Hamlet/HAMLET"  # the role with the most lines
MODELS = ("smollm2-135m", "gemma3-270m")
BATCH, SEQ_LEN = 4, 128
LORA = {"rank": 8, "optimizer": "adamw", "lr": 1e-3}
MEZO = {"subset": "lora", "rank": 8, "lr": 1e-3, "eps": 1e-3}
# cell name -> (method, options); "q4" is the 4-bit frozen base
CELLS: dict[str, tuple[str, dict[str, Any]]] = {
    "inference fp32": ("inference", {}),
    "inference q4": ("inference", {"base": "q4"}),
    "lora fp32 + ckpt": ("lora", LORA | {"checkpointing": True}),
    "lora q4": ("lora", LORA | {"base": "q4", "checkpointing": True, "micro_batch": 2}),
    "lora q4, micro-batch 1": ("lora", LORA | {"base": "q4", "checkpointing": True, "micro_batch": 1}),
    "mezo q4": ("mezo", MEZO | {"base": "q4"}),
}
TRAINED = ("lora fp32 + ckpt", "lora q4", "mezo q4")  # trained on the user for the quality columns
LEAN_LORA = ("lora q4", "lora q4, micro-batch 1")
GOAL_MIB = {"smollm2-135m": 192, "gemma3-270m": 384}
# a CI log is no 80-column terminal: progress lines unwrapped, tables 160 wide
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)


@dataclass(frozen=True)
class Settings:
    steps: int  # training steps of every trained cell (the same for all): the quality comparison
    eval_every: int  # backprop cells: held-out perplexity every this many steps
    mezo_steps: int  # MeZO's longer run, for time to quality
    mezo_eval_every: int
    test_windows: int  # held-out windows of the user (spread over its last lines)
    measure_steps: int
    warmup: int
    fed_users: int
    fed_per_round: int
    fed_rounds: int


FULL = Settings(steps=24, eval_every=2, mezo_steps=240, mezo_eval_every=20, test_windows=16, measure_steps=3,
                warmup=2, fed_users=20, fed_per_round=5, fed_rounds=5)
QUICK = Settings(steps=2, eval_every=1, mezo_steps=4, mezo_eval_every=2, test_windows=4, measure_steps=1,
                 warmup=0, fed_users=6, fed_per_round=2, fed_rounds=1)
# the full run trains Gemma-3-270M fewer steps (each costs ~3x SmolLM2's: 2x the weights, 5x the vocabulary)
FULL_STEPS = {"gemma3-270m": (8, 64)}  # model -> (steps, mezo_steps)
START = time.perf_counter()


def say(text: str) -> None:
    """A progress line with the seconds since start (flushed: CI logs are not a terminal)."""
    console.print(f"[{time.perf_counter() - START:6.0f} s] {text}")


def attempt(what: str, run: Callable[[], Any]) -> Any:
    """``run()``, or ``{"error": ...}`` when it fails, so one missing model or option does not end the run."""
    try:
        return run()
    except Exception as err:  # noqa: BLE001 - reported in the cell, the run goes on
        first = str(err).strip().splitlines()
        message = f"not available: {type(err).__name__}: {first[0] if first else ''}"[:300]
        say(f"{what}: {message}")
        return {"error": message}


def failed(value: Any) -> bool:
    return isinstance(value, dict) and "error" in value


def memory_cell(model: str, cell: str, s: Settings) -> dict[str, Any]:
    method, options = CELLS[cell]
    batch = get_model_spec(model).example_batch(BATCH, SEQ_LEN)
    m = measure(model, method, batch, options=options, steps=s.measure_steps, warmup=s.warmup,
                threads=torch.get_num_threads())
    say(f"{model} {cell}: peak {format_bytes(m.peak_bytes)}, {m.seconds_per_step:.2f} s/step")
    return {"peak_bytes": m.peak_bytes, "seconds_per_step": m.seconds_per_step, "trainable": m.num_trainable}


def perplexity(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return evaluate(model, batches_of(x, y, BATCH))["perplexity"]


def train_curve(model: str, cell: str, data: Any, steps: int, every: int, s: Settings) -> dict[str, Any]:
    """Held-out perplexity against training seconds, at step 0, every ``every`` steps and at ``s.steps``."""
    method_name, options = CELLS[cell]
    torch.manual_seed(0)  # the same LoRA initialisation for every base
    method = make_method(method_name, build_model(model, options.get("base", "fp32")), **options)
    batches = batches_of(data.x, data.y, BATCH, seed=0)
    points = [{"step": 0, "seconds": 0.0, "perplexity": perplexity(method.model, data.x_test, data.y_test)}]
    say(f"{model} {cell}: held-out perplexity before training {points[0]['perplexity']:.2f}")
    times: list[float] = []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        method.step(batches[(step - 1) % len(batches)])
        times.append(time.perf_counter() - start)
        if step % every == 0 or step in (s.steps, steps):
            points.append({"step": step, "seconds": sum(times),
                           "perplexity": perplexity(method.model, data.x_test, data.y_test)})
            say(f"{model} {cell}: step {step}/{steps}, {sum(times):.0f} s training, "
                f"held-out perplexity {points[-1]['perplexity']:.2f}")
    return {"points": points, "seconds_per_step": statistics.median(times)}


def quality(model: str, s: Settings) -> dict[str, Any]:
    data = tokenize_user(find_user(USER), load_tokenizer(model), seq_len=SEQ_LEN, max_test_windows=s.test_windows)
    say(f"{model}: {USER}, {len(data.x)} training and {len(data.x_test)} held-out windows of {SEQ_LEN} tokens")
    out = {}
    for cell in TRAINED:
        steps, every = (s.mezo_steps, s.mezo_eval_every) if cell == "mezo q4" else (s.steps, s.eval_every)
        out[cell] = attempt(f"{model} {cell} training", lambda c=cell, n=steps, e=every:
                            train_curve(model, c, data, n, e, s))
    return out


def inference_seconds(model: str, repeats: int = 3) -> float:
    """Median seconds of a no-grad forward pass with loss on the 4-bit base, in this process (as training)."""
    net = build_model(model, "q4").eval()
    batch = get_model_spec(model).example_batch(BATCH, SEQ_LEN)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            forward_loss(net, batch)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def one_model(model: str, s: Settings) -> dict[str, Any]:
    say(f"{model}: memory cells, each in a fresh process")
    memory = {cell: attempt(f"{model} {cell}", lambda c=cell: memory_cell(model, c, s)) for cell in CELLS}
    curves = attempt(f"{model} quality", lambda: quality(model, s))
    if failed(curves):
        curves = {cell: curves for cell in TRAINED}
    infer = attempt(f"{model} inference timing", lambda: inference_seconds(model))
    return {"memory": memory, "curves": curves, "inference_q4_seconds": infer, "steps": s.steps,
            "mezo_steps": s.mezo_steps}


def federated(model: str, s: Settings) -> list[dict[str, Any]]:
    config = FederatedLLMConfig(mode="fedit", users=s.fed_users, clients_per_round=s.fed_per_round,
                                rounds=s.fed_rounds, seq_len=SEQ_LEN, windows_per_user=4, devices={"phone-1g": 1.0},
                                options={"base": "q4", "checkpointing": True})
    say(f"federated fedit on {model} q4: {s.fed_users} users, {s.fed_per_round} per round, every client phone-1g")
    data = federated_users(load_tokenizer(model), config)
    _, report = run_federated(build_model(model, "q4"), data, config, on_round=lambda p: say(
        f"federated round {p.round}: held-out perplexity {p.perplexity:.2f}"))
    return report.to_dict()["rounds"]


def ppl_at(curve: dict[str, Any], step: int) -> float:
    """Held-out perplexity of a curve at ``step`` (a point is always taken there)."""
    return next(p["perplexity"] for p in curve["points"] if p["step"] == step)


def time_to_reach(curve: dict[str, Any], target: float) -> float:
    """Training seconds until a trained point's held-out perplexity is <= ``target`` (inf: never in its steps).

    Step 0 does not count: a MeZO run that ends no better than the base would otherwise be "reached" for free.
    """
    return next((p["seconds"] for p in curve["points"][1:] if p["perplexity"] <= target), float("inf"))


def model_goals(model: str, r: dict[str, Any]) -> list[tuple[str, Callable[[], float], str, float]]:
    """(goal, value, target text, bound) for one model; a goal is met when value <= bound."""
    mem, curves = r["memory"], r["curves"]
    peak = {c: mem[c]["peak_bytes"] for c in CELLS if not failed(mem[c])}
    lean = min((c for c in LEAN_LORA if c in peak), key=peak.__getitem__, default="lora q4")
    mezo, n = curves["mezo q4"], r["steps"]
    return [
        (f"{model}: 4-bit LoRA step peak, {lean} (MiB)", lambda: peak[lean] / 2**20, f"<= {GOAL_MIB[model]}",
         GOAL_MIB[model]),
        (f"{model}: {lean} peak / 4-bit MeZO(LoRA) peak", lambda: peak[lean] / peak["mezo q4"], "<= 1.2", 1.2),
        (f"{model}: held-out ppl after {n} steps, 4-bit LoRA / fp32 LoRA",
         lambda: ppl_at(curves["lora q4"], n) / ppl_at(curves["lora fp32 + ckpt"], n), "<= 1.05", 1.05),
        (f"{model}: 4-bit LoRA step / fp32 LoRA+ckpt step (s, trained here)",
         lambda: curves["lora q4"]["seconds_per_step"] / curves["lora fp32 + ckpt"]["seconds_per_step"], "<= 2", 2),
        (f"{model}: 4-bit MeZO step / 4-bit inference step (s, here)",
         lambda: mezo["seconds_per_step"] / r["inference_q4_seconds"], "<= 2.5", 2.5),
        (f"{model}: 4-bit LoRA time to MeZO's final ppl / MeZO's time",
         lambda: time_to_reach(curves["lora q4"], mezo["points"][-1]["perplexity"]) / mezo["points"][-1]["seconds"],
         "<= 0.2", 0.2),
    ]


def judge(text: str, value: Callable[[], float], target: str, bound: float) -> dict[str, Any]:
    try:
        v = float(value())
    except (KeyError, TypeError, StopIteration, ZeroDivisionError):  # an input cell was not available
        return {"goal": text, "value": None, "target": target, "met": False}
    return {"goal": text, "value": v, "target": target, "met": v <= bound}


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    specs = [g for model, r in results["models"].items() for g in model_goals(model, r)]
    rounds = results.get("federated")
    if rounds is not None:
        specs.append(("federated fedit q4: held-out ppl last round / round 0",
                      lambda: rounds[-1]["perplexity"] / rounds[0]["perplexity"], "< 1", 1 - 1e-12))
    return [judge(*spec) for spec in specs]


def show_goals(rows: list[dict[str, Any]]) -> None:
    table = Table(title="Goals (this run's numbers)")
    for column in ("goal", "value", "target", "result"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for g in rows:
        value = "not available" if g["value"] is None else f"{g['value']:.3f}"
        table.add_row(g["goal"], value, g["target"], "[green]PASS[/]" if g["met"] else "[red]FAIL[/]")
    console.print(table)
    console.print(f"[bold]{sum(g['met'] for g in rows)}/{len(rows)} goals met[/]")


def cell_row(model: str, cell: str, r: dict[str, Any]) -> str:
    m, curve = r["memory"][cell], r["curves"].get(cell)
    if failed(m):
        mem = f"{m['error']} | |"
    else:
        mem = f"{format_bytes(m['peak_bytes'])} | {m['seconds_per_step']:.2f} s |"
    here = ppl = ""
    if curve is not None:
        here = curve["error"] if failed(curve) else f"{curve['seconds_per_step']:.2f} s"
        ppl = "" if failed(curve) else f"{ppl_at(curve, 0):.2f} → {ppl_at(curve, r['steps']):.2f} ({r['steps']})"
    elif cell == "inference q4" and not failed(r["inference_q4_seconds"]):
        here = f"{r['inference_q4_seconds']:.2f} s"
    return f"| {model} | {cell} | {mem} {here} | {ppl} |"


def markdown(results: dict[str, Any], goal_rows: list[dict[str, Any]], s: Settings, quick: bool) -> str:
    command = f"python benchmarks/llm_lean.py{' --quick' if quick else ''}"
    lines = [f"Measured by `{command}` in {results['seconds']:.0f} s: batch {BATCH} × {SEQ_LEN} tokens, "
             f"{results['threads']} threads, user {USER!r} (its last 20% lines held out); each peak in a fresh "
             "process, step times there and in this process (the training runs; the goals use these).", "",
             "| model | cell | peak | step (fresh process) | step (trained here) | held-out ppl, 0 → N steps (N) "
             "|", "|---|---|---:|---:|---:|---|"]
    for model, r in results["models"].items():
        lines += [cell_row(model, cell, r) for cell in CELLS]
    lines += federated_markdown(results, s)
    lines += ["", "| goal | value | target | result |", "|---|---:|---|---|"]
    lines += [f"| {g['goal']} | {'not available' if g['value'] is None else format(g['value'], '.3f')} | "
              f"{g['target']} | {'PASS' if g['met'] else '**FAIL**'} |" for g in goal_rows]
    return "\n".join(lines) + "\n"


def federated_markdown(results: dict[str, Any], s: Settings) -> list[str]:
    if "federated" not in results:
        return []
    budget = format_bytes(get_device("phone-1g").memory_budget_bytes)
    head = ["", f"**Federated FedIT on {results['federated_model']}'s 4-bit base** ({s.fed_users} users, "
            f"{s.fed_per_round} per round, every client a phone-1g: {budget})", ""]
    rounds = results["federated"]
    if failed(rounds):
        return head + [rounds["error"]]
    return head + ["| round | held-out ppl | up per client |", "|---:|---:|---:|"] + [
        f"| {p['round']} | {p['perplexity']:.2f} | {p['bytes_up_per_client'] / 1e6:.2f} MB |" for p in rounds]


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for cell, label in (("lora q4", "4-bit LoRA backprop"), ("mezo q4", "4-bit MeZO (LoRA)")):
            curve = results["models"][model]["curves"][cell]
            if not failed(curve):
                ax.plot([p["seconds"] for p in curve["points"]], [p["perplexity"] for p in curve["points"]],
                        marker="o", markersize=3, label=label)
        ax.set(title=model, xlabel=f"training seconds ({results['threads']} threads)", ylabel="held-out perplexity")
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="SmolLM2 only, a few steps (CI)")
    parser.add_argument("--models", default=None,
                        help=f"comma-separated models (default: {','.join(MODELS)}; --quick: {MODELS[0]})")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, here and in the measuring "
                        "processes (default 2: a budget phone's background share)")
    parser.add_argument("--no-federated", action="store_true", help="skip the federated FedIT run")
    args = parser.parse_args()
    args.models = tuple(m.strip() for m in (args.models or (MODELS[0] if args.quick else ",".join(MODELS)))
                        .split(",") if m.strip())
    if unknown := [m for m in args.models if m not in MODELS]:
        parser.error(f"--models: unknown {unknown}; choose from {','.join(MODELS)}")
    return args


def run(args: argparse.Namespace, s: Settings) -> dict[str, Any]:
    results: dict[str, Any] = {"settings": vars(s), "threads": args.threads, "models": {}}
    for model in args.models:
        steps, mezo_steps = FULL_STEPS.get(model, (s.steps, s.mezo_steps)) if s is FULL else (s.steps, s.mezo_steps)
        results["models"][model] = one_model(model, replace(s, steps=steps, mezo_steps=mezo_steps))
    if not args.no_federated:
        results["federated_model"] = "gemma3-270m" if "gemma3-270m" in args.models else args.models[0]
        results["federated"] = attempt("federated", lambda: federated(results["federated_model"], s))
    results["seconds"] = time.perf_counter() - START
    return results


def main() -> None:
    args = parse_args()
    s = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)
    say(f"llm_lean{' --quick' if args.quick else ''}: models {', '.join(args.models)}")
    results = run(args, s)
    goal_rows = goals(results)
    stem = "llm_lean-quick" if args.quick else "llm_lean"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({**results, "goals": goal_rows}, indent=1))
    table = markdown(results, goal_rows, s, args.quick)
    (RESULTS / f"{stem}.md").write_text(table)
    plot(results, RESULTS / f"{stem}.png")
    if not args.quick:
        write_readme_section("llm-lean", table + f"\n![held-out perplexity against training seconds]"
                                                 f"(benchmarks/results/{stem}.png)\n")
    print(table)
    show_goals(goal_rows)


if __name__ == "__main__":
    main()
