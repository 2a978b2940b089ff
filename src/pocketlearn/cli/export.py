"""``pocketlearn export`` and ``pocketlearn device-train``: the training step as an ExecuTorch program, run there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pocketlearn.cli.train import parse_options, progress_bar, refuse_option_as_path
from pocketlearn.progress import working


def export_command(
    model: Annotated[str, typer.Argument(help="Model name (see `pocketlearn models`).")],
    method: Annotated[str, typer.Option(help="Which parameters train: a method that exports "
                                        "(see `pocketlearn methods`).")] = "backprop",
    fmt: Annotated[str, typer.Option("--format", help="Runtime to export for (executorch).")] = "executorch",
    output: Annotated[Path, typer.Option("--out", help="The .pte to write (+ a .pte.json sidecar).")
                      ] = Path("train.pte"),
    batch: Annotated[int, typer.Option(min=1, help="Examples per step; fixed in the exported program.")] = 32,
    seq_len: Annotated[int | None, typer.Option(help="Tokens per example, for language models.")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="Method option key=value (lr, "
                                                     "rank...), as for `train`.")] = None,
    init: Annotated[Path | None, typer.Option(help="Checkpoint to start from (plain or method-wrapped model).")
                    ] = None,
) -> None:
    """Export MODEL's joint forward + backward training step with METHOD for on-device training."""
    from pocketlearn.devices import format_bytes
    from pocketlearn.errors import ConfigError
    from pocketlearn.export import export_training

    refuse_option_as_path(output)
    if fmt != "executorch":
        raise ConfigError(f"unknown export format {fmt!r}; the one supported is 'executorch'")
    console = Console()
    with working(console, f"exporting {model} ({method}) for ExecuTorch"):
        info = export_training(model, output, method=method, options=parse_options(option or []),
                               batch_size=batch, seq_len=seq_len, init=init)
    console.print(info.extra["summary"])
    console.print(f"wrote {output} ({format_bytes(output.stat().st_size)}) and {output}.json: batches of "
                  f"{info.batch_size} x {info.input_shape} {info.input_dtype}, SGD lr {info.lr:g}, "
                  f"{format_bytes(info.extra['planned_bytes'])} planned per step")
    console.print(f"train it with: pocketlearn device-train {output} --data FILE --steps N", highlight=False)


def device_train_command(
    program: Annotated[Path, typer.Argument(help="A .pte written by `pocketlearn export`.")],
    data: Annotated[Path, typer.Option(help="Examples file (pocketlearn.data.files.save_examples).")],
    steps: Annotated[int, typer.Option(min=1, help="Training steps (full batches; the data repeats).")] = 100,
    lr: Annotated[float | None, typer.Option(help="SGD learning rate (default: the exported method's lr).")] = None,
    batch: Annotated[int | None, typer.Option(help="Must equal the exported batch size (static).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the per-epoch shuffle.")] = 0,
    output: Annotated[Path | None, typer.Option("--out", help="Checkpoint to write (default: "
                                                "PROGRAM-trained.pt).")] = None,
    merge: Annotated[bool, typer.Option(help="Write the plain model's weights (LoRA folded, sparse slices "
                                        "joined) instead of the method-wrapped model's.")] = False,
) -> None:
    """Train PROGRAM on DATA with the ExecuTorch runtime alone (no PyTorch autograd); write a checkpoint."""
    from pocketlearn.data.files import load_examples
    from pocketlearn.errors import ConfigError
    from pocketlearn.export import device_train, read_info, save_trained

    if output is not None:
        refuse_option_as_path(output)
    info = read_info(program)
    if batch is not None and batch != info.batch_size:
        raise ConfigError(f"{program} was exported for batch {info.batch_size}, a static size; export again with "
                          f"--batch {batch}, or leave --batch out")
    x, y, _ = load_examples(data)
    output = output or program.with_name(f"{program.stem}-trained.pt")
    console = Console()
    every = 1 if steps <= 20 else steps // 10
    with progress_bar(console) as progress:
        task = progress.add_task(f"device-train ({info.model}, {info.method})", total=steps, loss=float("nan"))

        def on_step(step: int, loss: float) -> None:
            progress.update(task, completed=step, loss=loss)
            if step % every == 0 or step == 1:
                progress.console.print(f"step {step:>6}  loss {loss:.4f}")

        result = device_train(program, x, y, steps=steps, lr=lr, seed=seed, on_step=on_step)
    save_trained(output, result, merged=merge)
    console.print(json.dumps({"steps": len(result.losses), "first_loss": result.losses[0],
                              "last_loss": result.losses[-1], "checkpoint": str(output), "merged": merge}, indent=2))
