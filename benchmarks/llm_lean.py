"""LLM fine-tuning on a budget phone: a 4-bit frozen base, lean backprop and MeZO, SmolLM2-135M and Gemma-3-270M.

    python benchmarks/llm_lean.py            # full run: results/llm_lean.{json,md,png}, docs/llm.md
    python benchmarks/llm_lean.py --quick    # SmolLM2 only, a few steps, for CI: results/llm_lean-quick.*

Memory cells: one step at batch 4 x 128 tokens, each in a fresh process (pocketlearn.memory.measure: VmHWM above
an import-matched baseline, memory-mapped weight pages included), 2 threads. Quality: held-out perplexity of a
Shakespeare user's last lines after the same number of steps, and perplexity against training seconds
(evaluation excluded) for 4-bit LoRA backprop and 4-bit MeZO. Federated: FedIT on the 4-bit base, every client
a `phone-1g`. Every ratio and goal comes from this one run.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from harness import Bench, goal, goal_summary, goal_table, parser, pyplot, save_figure
from pocketlearn.apps.llm import FederatedLLMConfig, find_user, get_choice, run_federated, tokenize_user
from pocketlearn.apps.llm.federated import federated_users
from pocketlearn.devices import format_bytes, get_device
from pocketlearn.evaluate import batches_of, evaluate
from pocketlearn.memory.measure import measure
from pocketlearn.methods import make_method
from pocketlearn.methods.base import forward_loss
from pocketlearn.models import build_model, get_model_spec
from pocketlearn.models.pretrained import load_tokenizer

USER = "Hamlet/HAMLET"
LORA = {"rank": 8, "optimizer": "adamw", "lr": 1e-3}
MEZO = {"subset": "lora", "rank": 8, "lr": 1e-3, "eps": 1e-3}  # trained with the app's lr for the architecture
# cell name -> (method, options); "q4" is the 4-bit frozen base
CELLS: dict[str, tuple[str, dict[str, Any]]] = {
    "inference fp32": ("inference", {}),
    "inference q4": ("inference", {"base": "q4"}),
    "lora fp32 + ckpt": ("lora", LORA | {"checkpointing": True}),
    "lora q4": ("lora", LORA | {"base": "q4", "checkpointing": True, "micro_batch": 2}),
    "lora q4, micro-batch 1": ("lora", LORA | {"base": "q4", "checkpointing": True, "micro_batch": 1}),
    "mezo q4": ("mezo", MEZO | {"base": "q4"}),
}
PAIRED_STEPS = 12  # MeZO's steps 2..12 each paired with an inference pass
TRAINED = ("lora fp32 + ckpt", "lora q4", "mezo q4")  # trained for the quality columns
GOAL_MIB = {"smollm2-135m": 192, "gemma3-270m": 384}


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...]
    steps: int  # training steps of every trained cell (the same for all)
    mezo_steps: int  # MeZO's longer run, for time to quality
    eval_every: int
    test_windows: int
    measure_steps: int
    fed_model: str
    fed_users: int
    fed_per_round: int
    fed_rounds: int


# Gemma-3-270M trains fewer steps in the full run: each costs ~3x SmolLM2's (2x the weights, 5x the vocabulary)
FEWER = {"gemma3-270m": (8, 64)}
FULL = Settings(("smollm2-135m", "gemma3-270m"), steps=24, mezo_steps=240, eval_every=4, test_windows=16,
                measure_steps=3, fed_model="gemma3-270m", fed_users=20, fed_per_round=5, fed_rounds=5)
QUICK = Settings(("smollm2-135m",), steps=2, mezo_steps=6, eval_every=2, test_windows=4, measure_steps=1,
                 fed_model="smollm2-135m", fed_users=6, fed_per_round=2, fed_rounds=1)
START = time.perf_counter()


def say(text: str) -> None:
    print(f"[{time.perf_counter() - START:6.0f} s] {text}", flush=True)


def memory_cells(model: str, s: Settings) -> dict[str, dict[str, Any]]:
    batch = get_model_spec(model).example_batch(4, 128)
    out = {}
    for name, (method, options) in CELLS.items():
        say(f"{model}: measuring {name}")
        m = measure(model, method, batch, options=options, steps=s.measure_steps, warmup=2, threads=2)
        out[name] = {"peak_bytes": m.peak_bytes, "seconds_per_step": m.seconds_per_step}
    return out


def perplexity(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return evaluate(model, batches_of(x, y, 4))["perplexity"]


def train_curve(model: str, cell: str, steps: int, s: Settings, data: Any,
                reference: Callable[[], float] | None = None) -> dict[str, Any]:
    """(training seconds, held-out perplexity) every ``eval_every`` steps, starting at (0, before), and the
    median step's seconds, the first (warm-up) step left out.

    ``reference``: a timed pass run after each of the first :data:`PAIRED_STEPS` steps, not counted in the
    curve. Each step over the pass after it gives a ratio; their median is robust to the machine's speed
    drifting during the run (a shared host's timings wander by tens of percent over minutes).
    """
    method_name, options = CELLS[cell]
    torch.manual_seed(0)
    net = build_model(model, options.get("base", "fp32"))
    if method_name == "mezo":  # the app's stable learning rate for this architecture
        options = options | {"lr": get_choice("mezo").with_overrides(model=net)["lr"]}
    method = make_method(method_name, net, **options)
    x_test, y_test = data.x_test[:s.test_windows], data.y_test[:s.test_windows]
    batches = batches_of(data.x, data.y, 4, seed=0)
    curve, seconds, times, paired = [(0.0, perplexity(method.model, x_test, y_test))], 0.0, [], []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        method.step(batches[(step - 1) % len(batches)])
        times.append(time.perf_counter() - start)
        seconds += times[-1]
        if reference is not None and 1 < step <= PAIRED_STEPS:
            paired.append((times[-1], reference()))
        if step % s.eval_every == 0 or step == steps:
            curve.append((seconds, perplexity(method.model, x_test, y_test)))
            say(f"{model} {cell}: step {step}/{steps}, {seconds:.0f} s, held-out perplexity {curve[-1][1]:.2f}")
    return {"curve": curve, "median_step": statistics.median(times[1:] or times),
            "median_reference": statistics.median(r for _, r in paired) if paired else None,
            "median_ratio": statistics.median(t / r for t, r in paired) if paired else None}


def inference_pass(model: str) -> Callable[[], float]:
    """A timer of one no-grad forward pass with loss on the 4-bit base (its warm-up pass done)."""
    net = build_model(model, "q4")
    batch = get_model_spec(model).example_batch(4, 128)

    @torch.no_grad()
    def timed() -> float:
        start = time.perf_counter()
        forward_loss(net, batch)
        return time.perf_counter() - start

    timed()
    return timed


def quality(model: str, s: Settings) -> dict[str, Any]:
    """Each trained cell's curve and median step seconds; MeZO's step over a 4-bit inference pass, paired.

    Steps are timed in this process, not the fresh measuring one: that one returns freed memory to the OS at
    once, which slows a step's many short-lived tensors.
    """
    data = tokenize_user(find_user(USER), load_tokenizer(model), seq_len=128)
    out: dict[str, Any] = {"curves": {}, "step_seconds": {}}
    for cell in TRAINED:
        steps = s.mezo_steps if cell == "mezo q4" else s.steps
        reference = inference_pass(model) if cell == "mezo q4" else None
        run = train_curve(model, cell, steps, s, data, reference)
        out["curves"][cell], out["step_seconds"][cell] = run["curve"], run["median_step"]
        if reference is not None:
            out["step_seconds"]["inference q4"] = run["median_reference"]
            out["mezo_over_inference"] = run["median_ratio"]
    return out


def federated(s: Settings) -> list[dict[str, Any]]:
    config = FederatedLLMConfig("fedit", s.fed_users, s.fed_per_round, s.fed_rounds, windows_per_user=4,
                                devices={"phone-1g": 1.0}, options={"base": "q4", "checkpointing": True})
    say(f"federated fedit on {s.fed_model} q4: {s.fed_users} users, {s.fed_per_round} per round, phone-1g")
    template = build_model(s.fed_model, "q4")
    data = federated_users(load_tokenizer(s.fed_model), config)
    _, report = run_federated(template, data, config,
                              on_round=lambda p: say(f"round {p.round}: held-out perplexity {p.perplexity:.2f}"))
    return report.to_dict()["rounds"]


def step_at(curves: dict[str, list[tuple[float, float]]], cell: str, steps: int, s: Settings) -> float:
    """Held-out perplexity of ``cell`` after ``steps`` steps (a curve point)."""
    index = min(-(-steps // s.eval_every), len(curves[cell]) - 1)
    return curves[cell][index][1]


def goals(results: dict[str, Any], s: Settings) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    add = rows.append
    for model, r in results["models"].items():
        mem, curves = r["memory"], r["curves"]
        s = replace(s, steps=r["steps"], mezo_steps=r["mezo_steps"])
        peak = {k: v["peak_bytes"] for k, v in mem.items()}
        step = r["step_seconds"]  # medians timed in this process (see quality)
        limit = GOAL_MIB[model]
        add(goal(f"{model}: 4-bit LoRA step peak (MiB)", peak["lora q4"] / 2**20, f"<= {limit}",
                 peak["lora q4"] <= limit * 2**20))
        lean = min(peak["lora q4"], peak["lora q4, micro-batch 1"])
        add(goal(f"{model}: leanest 4-bit LoRA peak / 4-bit MeZO peak", lean / peak["mezo q4"], "<= 1.2",
                 lean <= 1.2 * peak["mezo q4"]))
        q4, fp32 = step_at(curves, "lora q4", s.steps, s), step_at(curves, "lora fp32 + ckpt", s.steps, s)
        add(goal(f"{model}: held-out ppl after {s.steps} steps, 4-bit LoRA / fp32 LoRA", q4 / fp32, "<= 1.05",
                 q4 <= 1.05 * fp32))
        ratio = step["lora q4"] / step["lora fp32 + ckpt"]
        add(goal(f"{model}: 4-bit LoRA step / fp32 LoRA+ckpt step", ratio, "<= 2", ratio <= 2))
        ratio = r["mezo_over_inference"]  # paired step by step: see train_curve
        add(goal(f"{model}: 4-bit MeZO step / 4-bit inference step", ratio, "<= 2.5", ratio <= 2.5))
        target, mezo_time = curves["mezo q4"][-1][1], curves["mezo q4"][-1][0]
        reached = next((t for t, p in curves["lora q4"][1:] if p <= target), None)  # trained points only
        share = reached / mezo_time if reached is not None and mezo_time > 0 else float("inf")
        add(goal(f"{model}: 4-bit LoRA time to MeZO's final ppl / MeZO's time", share, "<= 0.2", share <= 0.2))
    first, last = results["federated"][0]["perplexity"], results["federated"][-1]["perplexity"]
    add(goal("federated fedit q4: held-out ppl last round / round 0", last / first, "< 1", last < first))
    return rows


def markdown(results: dict[str, Any], goal_rows: list[dict[str, Any]], s: Settings) -> str:
    lines = [f"Measured by `{results['command']}` in "
             f"{results['seconds']:.0f} s: batch 4 x 128 tokens, 2 threads, each memory cell in a fresh process.", "",
             "| model | cell | peak | step (fresh process) | median step (trained here) | held-out ppl after N steps |",
             "|---|---|---:|---:|---:|---:|"]
    fed = s
    for model, r in results["models"].items():
        s = replace(fed, steps=r["steps"], mezo_steps=r["mezo_steps"])
        timed = r["step_seconds"]
        for cell, m in r["memory"].items():
            ppl = f"{step_at(r['curves'], cell, s.steps, s):.2f}" if cell in r["curves"] else ""
            here = f"{timed[cell]:.2f} s" if cell in timed else ""
            lines.append(f"| {model} | {cell} | {format_bytes(m['peak_bytes'])} | {m['seconds_per_step']:.2f} s | "
                         f"{here} | {ppl}{f' (N={s.steps})' if ppl else ''} |")
    s = fed
    budget = format_bytes(get_device("phone-1g").memory_budget_bytes)
    lines += ["", f"**Federated FedIT on {s.fed_model}'s 4-bit base** ({s.fed_users} users, {s.fed_per_round} "
              f"per round, every client a phone-1g: {budget})", "", "| round | held-out ppl | up per client |",
              "|---:|---:|---:|"]
    for p in results["federated"]:
        lines.append(f"| {p['round']} | {p['perplexity']:.2f} | {p['bytes_up_per_client'] / 1e6:.2f} MB |")
    return "\n".join(lines) + "\n\n" + goal_table(goal_rows)


def plot(results: dict[str, Any], path: Path) -> None:
    models = list(results["models"])
    fig, axes = pyplot().subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for cell in ("lora q4", "mezo q4"):
            t, p = zip(*results["models"][model]["curves"][cell], strict=True)
            ax.plot(t, p, marker="o", label=f"4-bit {cell.split()[0]}")
        ax.set(title=model, xlabel="training seconds (2 threads)", ylabel="held-out perplexity")
        ax.legend()
    save_figure(fig, path, dpi=120)


def main() -> None:
    cli = parser(__doc__, "SmolLM2 only, a few steps (CI)")
    cli.add_argument("--models", help="comma-separated subset of the models (default: all of the run's)")
    cli.add_argument("--fed-model", help="the model of the federated run (default: the run's)")
    args = cli.parse_args()
    s = QUICK if args.quick else FULL
    if args.models:
        s = replace(s, models=tuple(args.models.split(",")))
    if args.fed_model:
        s = replace(s, fed_model=args.fed_model)
    torch.set_num_threads(2)
    results: dict[str, Any] = {"models": {}, "command": " ".join(["python benchmarks/llm_lean.py", *sys.argv[1:]])}
    for model in s.models:
        steps, mezo_steps = FEWER.get(model, (s.steps, s.mezo_steps)) if s is FULL else (s.steps, s.mezo_steps)
        ms = replace(s, steps=steps, mezo_steps=mezo_steps)
        results["models"][model] = {"memory": memory_cells(model, ms), **quality(model, ms), "steps": steps,
                                    "mezo_steps": mezo_steps}
    results["federated"] = federated(s)
    results["seconds"] = time.perf_counter() - START
    goal_rows = goals(results, s)
    table = markdown(results, goal_rows, s)
    Bench("llm_lean", args.quick, section="llm-lean").publish(
        {**results, "goals": goal_rows}, table, plot=lambda path: plot(results, path),
        figure="perplexity against training time")
    print(table)
    print(goal_summary(goal_rows))


if __name__ == "__main__":
    main()
