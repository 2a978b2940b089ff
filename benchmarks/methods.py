"""Per-method figures: measured peak memory, step time, trainable parameters, and quality after a fixed budget.

    python benchmarks/methods.py            # full run (~15 min on 2 cores): results/methods.*, docs/methods.md
    python benchmarks/methods.py --quick    # small slices, for CI; writes results/methods-quick.*

Memory is measured in a fresh process per (model, method) (pocketlearn.memory.measure); ratios are taken
within this one run. Activation memory is the memory that grows with the batch: measured peak at the
suite's batch minus measured peak at batch 1 (weights, gradients, optimizer state and weight-sized
temporaries cancel out).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from rich.console import Console

from harness import Bench, goal, goal_summary, goal_table, parser
from pocketlearn.devices import format_bytes
from pocketlearn.errors import TrainingError, UnsupportedModelError
from pocketlearn.evaluate import batches_of, evaluate
from pocketlearn.memory import measure
from pocketlearn.methods import make_method
from pocketlearn.models import build_model, get_model_spec
from pocketlearn.progress import progress_bars
from pocketlearn.trainer import LocalTrainer, TrainerConfig

console = Console()


@dataclass(frozen=True)
class Variant:
    label: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    name: str
    model: str
    memory_batch: int
    variants: tuple[Variant, ...]
    train_batch: int = 64
    epochs: int = 1
    train_limit: int | None = None
    pretrain: bool = False  # start from a model pretrained on half the classes (transfer learning)
    activations: bool = False  # also measure at batch 1: activation memory = peak(batch) - peak(1)
    train: bool = True


SGD = {"lr": 0.02, "momentum": 0.9}
PEPITA = {"lr": 0.01, "feedback_scale": 0.05}  # the paper's settings (Dellaferrera & Kreiman 2022)
SUITES = {
    "mlp": Suite("mlp", "mlp-1024", 512, (
        Variant("backprop", "backprop", SGD),
        Variant("bias", "bias", SGD),
        Variant("sparse", "sparse", SGD),
        Variant("lora", "lora", {**SGD, "lr": 0.05, "rank": 8, "train_head": True}),
        Variant("mezo", "mezo", {}),
        Variant("pepita", "pepita", PEPITA),
        Variant("mempepita", "pepita", {**PEPITA, "memory_efficient": True}),
        Variant("binary", "binary", {"keep_first_last_real": False}),
    ), epochs=3, activations=True),
    "mlp-deep": Suite("mlp-deep", "mlp-deep", 2048, (
        Variant("backprop", "backprop", SGD),
        Variant("pepita", "pepita", PEPITA),
        Variant("mempepita", "pepita", {**PEPITA, "memory_efficient": True}),
    ), activations=True, train=False),
    "cnn": Suite("cnn", "cnn", 128, (
        Variant("backprop", "backprop", SGD),
        Variant("bias", "bias", SGD),
        Variant("tinytl", "tinytl", SGD),
        Variant("sparse", "sparse", SGD),
        Variant("lora", "lora", {**SGD, "lr": 0.05, "train_head": True}),
        Variant("mezo", "mezo", {}),
        Variant("pepita", "pepita", PEPITA),
        Variant("binary", "binary", {}),
    ), epochs=1, train_limit=20_000, activations=True, pretrain=True),
    "llm": Suite("llm", "smollm2-135m", 4, (
        Variant("backprop+adamw", "backprop", {"lr": 1e-5, "optimizer": "adamw"}),
        Variant("lora", "lora", {"lr": 1e-3, "optimizer": "adamw", "rank": 8}),
        Variant("lora+ckpt", "lora", {"lr": 1e-3, "optimizer": "adamw", "rank": 8, "checkpointing": True}),
        Variant("sparse", "sparse", {"lr": 1e-5, "optimizer": "adamw", "last_k": 2}),
        Variant("bias", "bias", {"lr": 1e-3, "optimizer": "adamw"}),
        Variant("mezo", "mezo", {"lr": 1e-6, "eps": 1e-3}),
        Variant("mezo (lora)", "mezo", {"subset": "lora", "lr": 3e-4, "eps": 1e-3}),
    ), train_batch=4),
}
LLM_SEQ = 128


@dataclass
class Row:
    suite: str
    label: str
    method: str
    trainable: int = 0
    peak_bytes: int = 0
    activation_bytes: int = 0
    seconds_per_step: float = 0.0
    quality: float = math.nan  # accuracy (classifiers) or held-out loss (LM)
    quality_before: float = math.nan
    note: str = ""  # why the method does not apply
    diverged: bool = False


def measure_row(suite: Suite, variant: Variant, batch: Any) -> Row:
    row = Row(suite.name, variant.label, variant.method)
    try:
        make_method(variant.method, build_model(suite.model), **variant.options)
    except UnsupportedModelError as err:
        row.note = str(err).split(";")[0]
        return row
    m = measure(suite.model, variant.method, batch, options=variant.options, steps=2)
    row.trainable, row.peak_bytes, row.seconds_per_step = m.num_trainable, m.peak_bytes, m.seconds_per_step
    if suite.activations:
        one = get_model_spec(suite.model).example_batch(1)
        row.activation_bytes = m.peak_bytes - measure(suite.model, variant.method, one, options=variant.options,
                                                      steps=2).peak_bytes
    return row


@functools.cache
def pretrained_state(model: str, quick: bool) -> dict[str, torch.Tensor]:
    """Transfer setting: backprop on Fashion-MNIST classes 0-4 of the second half of the training set,
    then a fresh head; each method then fine-tunes on all ten classes of the first half."""
    from pocketlearn.data.fashion_mnist import load_fashion_mnist

    x, y = load_fashion_mnist("train")
    x, y = x[30_000:], y[30_000:]
    keep = y < 5
    x, y = x[keep][: 3000 if quick else None], y[keep][: 3000 if quick else None]
    torch.manual_seed(1)
    net = build_model(model)
    LocalTrainer(make_method("backprop", net, **SGD), TrainerConfig(epochs=2, batch_size=64)).fit(x, y)
    head = net[-1]
    head.reset_parameters()
    return {k: v.clone() for k, v in net.state_dict().items()}


def fashion_quality(suite: Suite, variant: Variant, quick: bool) -> tuple[float, float]:
    from pocketlearn.data.fashion_mnist import load_fashion_mnist

    limit = 4000 if quick else suite.train_limit
    x, y = load_fashion_mnist("train", limit=limit)
    xt, yt = load_fashion_mnist("test", limit=2000 if quick else None)
    if suite.model.startswith("mlp"):
        x, xt = x.flatten(1), xt.flatten(1)
    torch.manual_seed(0)
    net = build_model(suite.model)
    if suite.pretrain:
        net.load_state_dict(pretrained_state(suite.model, quick))
    method = make_method(variant.method, net, **variant.options)
    before = evaluate(method.model, batches_of(xt, yt, 1000))["accuracy"]
    epochs = 1 if quick else suite.epochs
    LocalTrainer(method, TrainerConfig(epochs=epochs, batch_size=suite.train_batch)).fit(x, y)
    return before, evaluate(method.model, batches_of(xt, yt, 1000))["accuracy"]


def shakespeare_tokens() -> tuple[torch.Tensor, torch.Tensor]:
    """One user's text (the largest role) tokenized for SmolLM2: train windows and held-out windows."""
    from pocketlearn.data.shakespeare import lm_windows, load_roles, split_user_lines
    from pocketlearn.models.pretrained import load_smollm2

    tokenizer = load_smollm2()[1]
    role = max(load_roles(min_chars=2000), key=lambda r: r.num_chars)
    train, held_out = split_user_lines(role)
    encode = lambda lines: torch.tensor(tokenizer("\n".join(lines))["input_ids"])  # noqa: E731
    return lm_windows(encode(train), LLM_SEQ), lm_windows(encode(held_out), LLM_SEQ)


def llm_quality(variant: Variant, steps: int, data: Any) -> tuple[float, float]:
    (x, y), (xt, yt) = data
    held_out = batches_of(xt[:16], yt[:16], 4)
    torch.manual_seed(0)
    method = make_method(variant.method, build_model("smollm2-135m"), **variant.options)
    before = evaluate(method.model, held_out)["loss"]
    for batch in batches_of(x, y, 4, seed=0)[:steps]:
        method.step(batch)
    return before, evaluate(method.model, held_out)["loss"]


def run_suite(suite: Suite, quick: bool, progress: Any) -> list[Row]:
    spec = get_model_spec(suite.model)
    batch = spec.example_batch(suite.memory_batch, LLM_SEQ if spec.task == "lm" else None)
    task = progress.add_task(f"{suite.name}: memory", total=len(suite.variants) * 2 + 1)
    inference = measure(suite.model, "inference", batch, steps=2)
    rows = [Row(suite.name, "inference", "inference", peak_bytes=inference.peak_bytes,
                seconds_per_step=inference.seconds_per_step)]
    if suite.activations:
        one = measure(suite.model, "inference", spec.example_batch(1), steps=2)
        rows[0].activation_bytes = inference.peak_bytes - one.peak_bytes
    progress.advance(task)
    for v in suite.variants:
        progress.update(task, description=f"{suite.name}: memory of {v.label}")
        rows.append(measure_row(suite, v, batch))
        progress.advance(task)
    llm_data = shakespeare_tokens() if spec.task == "lm" and not quick else None
    for v, row in zip(suite.variants, rows[1:], strict=True):
        progress.update(task, description=f"{suite.name}: training with {v.label}")
        try:
            if row.note or not suite.train:
                pass
            elif spec.task == "lm":
                if llm_data is not None:
                    row.quality_before, row.quality = llm_quality(v, 8, llm_data)
            else:
                row.quality_before, row.quality = fashion_quality(suite, v, quick)
        except TrainingError:
            row.diverged = True
        progress.advance(task)
    return rows


def find(rows: list[Row], suite: str, label: str) -> Row:
    return next(r for r in rows if r.suite == suite and r.label == label)


def goals(rows: list[Row]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    add = out.append
    suites = {r.suite for r in rows}
    if "llm" in suites:
        inf = find(rows, "llm", "inference").peak_bytes
        mezo, lora, ckpt, bp = (find(rows, "llm", k).peak_bytes / inf
                                for k in ("mezo", "lora", "lora+ckpt", "backprop+adamw"))
        add(goal("SmolLM2 mezo peak / inference peak", mezo, "<= 1.3", mezo <= 1.3))
        # LoRA keeps every frozen layer's input for the adapters' gradients; with activation checkpointing
        # (how LLMs are fine-tuned under a budget) only each block's input stays
        add(goal("SmolLM2 lora peak / backprop+adamw peak", lora / bp, "< 0.5", lora / bp < 0.5))
        add(goal("SmolLM2 lora+ckpt peak / backprop+adamw peak", ckpt / bp, "< 0.5", ckpt / bp < 0.5))
        add(goal("SmolLM2 backprop+adamw peak / inference peak", bp, ">= 3.5", bp >= 3.5))
    if "mlp-deep" in suites:
        bp = find(rows, "mlp-deep", "backprop")
        saved = 1 - find(rows, "mlp-deep", "mempepita").activation_bytes / bp.activation_bytes
        add(goal("deep MLP mempepita activation memory saved vs backprop", saved, ">= 0.5", saved >= 0.5))
    if "mlp" in suites:
        bp = find(rows, "mlp", "backprop")
        for label in ("pepita", "mempepita"):
            gap = bp.quality - find(rows, "mlp", label).quality
            add(goal(f"MLP {label} accuracy gap to backprop (points)", 100 * gap, "<= 5", 100 * gap <= 5))
    if "cnn" in suites:
        bp = find(rows, "cnn", "backprop").peak_bytes
        for label in ("bias", "tinytl", "sparse"):
            ratio = find(rows, "cnn", label).peak_bytes / bp
            add(goal(f"CNN {label} peak / backprop peak", ratio, "< 1", ratio < 1))
    return out


def markdown(rows: list[Row], goal_rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, "", "| model | method | trainable | train peak | × inference | activations | step × backprop "
             "| quality before → after |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for suite in dict.fromkeys(r.suite for r in rows):
        srows = [r for r in rows if r.suite == suite]
        inf = srows[0].peak_bytes
        bp = next(r for r in srows if r.method == "backprop").seconds_per_step
        model = SUITES[suite].model
        for r in srows:
            if r.note:
                lines.append(f"| {model} | {r.label} | n/a | | | | | {r.note} |")
                continue
            quality = "diverged (non-finite loss)" if r.diverged else "" if math.isnan(r.quality) else (
                f"acc {r.quality_before:.3f} → {r.quality:.3f}" if suite != "llm"
                else f"loss {r.quality_before:.3f} → {r.quality:.3f}")
            act = format_bytes(r.activation_bytes) if SUITES[suite].activations else ""
            lines.append(f"| {model} | {r.label} | {r.trainable:,} | {format_bytes(r.peak_bytes)} | "
                         f"{r.peak_bytes / inf:.2f}× | {act} | {r.seconds_per_step / bp:.2f}× | {quality} |")
    return "\n".join(lines) + "\n\n" + goal_table(goal_rows)


def main() -> None:
    cli = parser(__doc__, "small slices and no LLM fine-tuning (CI)")
    cli.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated subset of {','.join(SUITES)}")
    args = cli.parse_args()
    start = time.time()
    rows: list[Row] = []
    with progress_bars(console=console) as progress:
        for name in args.suites.split(","):
            rows += run_suite(SUITES[name], args.quick, progress)
    goal_rows = goals(rows)
    header = (f"Measured by `python benchmarks/methods.py{' --quick' if args.quick else ''}` in "
              f"{time.time() - start:.0f} s on {torch.get_num_threads()} threads.")
    table = markdown(rows, goal_rows, header)
    Bench("methods", args.quick).publish({"rows": [asdict(r) for r in rows], "goals": goal_rows}, table,
                                         docs=args.suites == ",".join(SUITES))
    print(table)
    console.print(goal_summary(goal_rows), style="bold")


if __name__ == "__main__":
    main()
