"""``pocketlearn train``: fine-tune a model on local data within a device's budget, resumable."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from pocketlearn.progress import progress_bars


def train_command(
    model: Annotated[str, typer.Option(
        help="Model name (see `pocketlearn models`), or your own: package.module:function returning an nn.Module.")],
    data: Annotated[str, typer.Option(help="digits | fashion-mnist | shakespeare")],
    method: Annotated[str, typer.Option(help="Training method (see `pocketlearn methods`).")] = "backprop",
    device: Annotated[str | None, typer.Option(help="Device preset whose memory budget is enforced.")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the data. Resuming with more epochs than the "
                                        "checkpoint's run continues it (said in the output); fewer is a "
                                        "mismatch.")] = 1,
    batch: Annotated[int, typer.Option(min=1)] = 32,
    limit: Annotated[int | None, typer.Option(min=1, help="Use only this many examples (quick runs).")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="Method option key=value.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(
        help="Checkpoint file; an existing one is resumed when it was written with the same model, data, limit, "
             "method, options, batch and seed (else an error names each difference).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    resume_anyway: Annotated[bool, typer.Option(
        "--resume-anyway", help="Resume a checkpoint written with other settings: its weights (and its optimizer "
                                "state, unless the method options changed) continue from its step under the new "
                                "settings; the result then matches no single uninterrupted run.")] = False,
    image_size: Annotated[int | None, typer.Option(
        help="A pretrained vision model (efficientnet-lite0) resizes each input image to this square first, "
             "e.g. 128 for 28-pixel Fashion-MNIST.")] = None,
    tensorboard: Annotated[Path | None, typer.Option(
        help="Also write the loss of each step and the test metrics before and after as TensorBoard event files "
             "in this folder (view: tensorboard --logdir DIR).")] = None,
) -> None:
    """Train MODEL on DATA with METHOD; checkpoints atomically and resumes a killed run where it stopped."""
    import torch

    from pocketlearn.data import load_tensors
    from pocketlearn.devices import get_device
    from pocketlearn.evaluate import batches_of, evaluate
    from pocketlearn.methods import make_method
    from pocketlearn.models import build_model, get_model_spec
    from pocketlearn.tracking import ScalarLog
    from pocketlearn.trainer import LocalTrainer, TrainerConfig

    track = ScalarLog(tensorboard, flush_each=False) if tensorboard else None  # a missing package fails first
    spec = get_model_spec(model)
    x, y, xt, yt = load_tensors(data, seq_len=spec.seq_len or 64, limit=limit, unit_pixels=spec.unit_pixels)
    torch.manual_seed(seed)
    options = parse_options(option or [])
    net = build_model(model, str(options.get("base", "fp32")), image_size=image_size)  # an LM loads its base quantized
    trainer = LocalTrainer(make_method(method, net, **options),
                           TrainerConfig(epochs=epochs, batch_size=batch, seed=seed),
                           device=get_device(device) if device else None, checkpoint_path=checkpoint,
                           settings={"model": model, "data": data, "limit": limit,
                                     **({"image_size": image_size} if image_size else {})},
                           resume_anyway=resume_anyway)
    console = Console()
    start, total = trainer.restore(x, y), trainer.total_steps(len(x))  # a checkpoint that does not fit fails first
    console.print(trainer.method.summary())
    if start >= total:
        console.print(f"checkpoint {checkpoint} is complete: {start}/{total} steps ({epochs} epoch(s) of "
                      f"{len(x)} examples); to train longer, run again with more --epochs (e.g. --epochs {epochs + 1})",
                      soft_wrap=True)
        after = evaluate(trainer.method.model, batches_of(xt, yt, 256))
        console.print(json.dumps({"steps": start, "resumed_from_step": start, "after": after}, indent=2))
        return
    if start:
        console.print(f"resuming {checkpoint} from step {start}/{total}", soft_wrap=True)
    rng = torch.get_rng_state()  # evaluating must not move the random stream a resumed run continues
    before = evaluate(trainer.method.model, batches_of(xt, yt, 256))  # the weights this run starts from
    torch.set_rng_state(rng)
    with track or nullcontext():  # closed (flushed) even when training fails
        if track and not start:  # a resumed run's earlier steps (its start included) are in the log already
            track.write(0, eval_tags(before))
        with progress_bar(console) as progress:
            task = progress.add_task(f"training ({method})", total=total, completed=start, loss=float("nan"))

            def on_step(step: int, loss: float) -> None:
                progress.update(task, completed=step, loss=loss)
                if track:
                    track.write(step, {"train_loss": loss})

            result = trainer.fit(x, y, on_step=on_step)
        after = evaluate(trainer.method.model, batches_of(xt, yt, 256))
        if track:
            track.write(result.steps, eval_tags(after))
    for note in result.notes:
        console.print(f"note: {note}")
    precision = getattr(trainer.method.config, "precision", "fp32")  # (methods without backprop: fp32)
    console.print(json.dumps({"steps": result.steps, "resumed_from_step": result.resumed_from_step,
                              "precision": precision, "before": before, "after": after}, indent=2))


def eval_tags(metrics: dict[str, float]) -> dict[str, float]:
    """Test metrics under the tags a federated run uses (``test_accuracy``...), so both plot alike."""
    return {f"test_{k}": v for k, v in metrics.items()}


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["rank=4", "optimizer=adamw"]`` → ``{"rank": 4, "optimizer": "adamw"}`` (JSON values where they parse)."""
    from pocketlearn.errors import ConfigError

    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"option {pair!r} should look like key=value, e.g. -o lr=0.01")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def refuse_option_as_path(path: Path) -> None:
    """An output path like ``rank=4`` is a method option typed where a file name goes: refuse it."""
    from pocketlearn.errors import ConfigError

    key, sep, _ = path.name.partition("=")
    if sep and key.isidentifier():
        raise ConfigError(f"output path {str(path)!r} looks like a method option; options go after -o/--option "
                          f"(-o {path.name}), the file after --out")


def progress_bar(console: Console) -> Any:
    """A training progress bar that shows the latest loss."""
    return progress_bars(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TimeRemainingColumn(), TextColumn("loss {task.fields[loss]:.4f}"), console=console)
