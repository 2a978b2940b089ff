"""``pocketlearn demo``: plan and run on-device training of a character model on Shakespeare, end to end."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel


def demo_command(
    device: Annotated[str, typer.Option(help="Device preset to plan for.")] = "phone-1g",
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = 1500,
) -> None:
    """Measure which methods fit a phone, train with the best one, and show the model before and after."""
    import torch

    from pocketlearn.cli.plan import plan_table
    from pocketlearn.cli.train import progress_bar
    from pocketlearn.data import load_tensors
    from pocketlearn.data.shakespeare import decode_chars, encode_chars
    from pocketlearn.devices import get_device
    from pocketlearn.evaluate import batches_of, evaluate
    from pocketlearn.memory.planner import plan
    from pocketlearn.methods import GradientConfig, get_method_class, make_method
    from pocketlearn.models import build_model, get_model_spec

    console = Console()
    profile, spec = get_device(device), get_model_spec("tiny-gpt")
    console.print(Panel(f"1. Which training methods fit a [bold]{profile.name}[/] "
                        f"({profile.description})? Each is measured in a fresh process."))
    with console.status("measuring every method"):
        result = plan("tiny-gpt", profile, spec.example_batch(32))
    console.print(plan_table(result))
    x, y, xt, yt = load_tensors("shakespeare", seq_len=spec.seq_len)
    console.print(Panel(f"2. Train with [bold]{result.recommended}[/] on {len(x):,} windows of Shakespeare "
                        "(users' lines; their last lines held out)."))
    torch.manual_seed(0)
    gradient_based = issubclass(get_method_class(result.recommended).config_cls, GradientConfig)
    options = {"lr": 3e-3, "optimizer": "adamw"} if gradient_based else {}
    method = make_method(result.recommended, build_model("tiny-gpt"), **options)
    held_out = batches_of(xt[:512], yt[:512], 128)
    before = evaluate(method.model, held_out)
    with progress_bar(console) as progress:
        task = progress.add_task(f"training ({method.name})", total=steps, loss=float("nan"))
        for i, batch in enumerate(batches_of(x, y, 32, seed=0)[:steps]):
            progress.update(task, completed=i + 1, loss=method.step(batch))
    after = evaluate(method.model, held_out)
    console.print(f"held-out next-character loss {before['loss']:.3f} → {after['loss']:.3f}, "
                  f"accuracy {before['accuracy']:.1%} → {after['accuracy']:.1%}")
    prompt = "ROMEO. "
    sample = method.model.generate(encode_chars(prompt)[None], 120)[0]
    console.print(Panel(decode_chars(sample), title="a sample from the trained model"))
    console.print("Next: `pocketlearn plan --model smollm2-135m --device phone-4g --batch 4` to see which methods "
                  "fit a real LLM on a phone; `pocketlearn train --help`; `python benchmarks/methods.py`.")
