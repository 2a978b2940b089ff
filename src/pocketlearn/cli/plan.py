"""``pocketlearn plan``: which training methods fit this model on this device, measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pocketlearn.devices import format_bytes, get_device
from pocketlearn.memory.planner import Plan
from pocketlearn.progress import working


def plan_command(
    model: Annotated[str, typer.Option(
        help="Model name (see `pocketlearn models`), or your own: package.module:function returning an nn.Module.")],
    device: Annotated[str, typer.Option(help="Device preset (see `pocketlearn devices`) or a name in --devices-file.")],
    batch: Annotated[int, typer.Option(min=1, help="Examples per training step.")] = 32,
    seq_len: Annotated[int | None, typer.Option(help="Tokens per example, for language models.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Image side in pixels, for the pretrained vision models "
                                                   "(efficientnet-lite0: 224 by default).")] = None,
    methods: Annotated[str | None, typer.Option(help="Comma-separated subset of methods to consider.")] = None,
    devices_file: Annotated[Path | None, typer.Option(help="TOML file with [devices.NAME] tables.")] = None,
    measure: Annotated[bool, typer.Option(help="Also measure each method in a fresh process (minutes: loads the "
                                          "weights); else estimate from the model's shapes, instantly.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Estimate and measure every training method's peak memory and step time, and recommend one that fits."""
    from pocketlearn.memory.planner import plan, train_flags
    from pocketlearn.models import get_model_spec

    profile = get_device(device, devices_file)
    spec = get_model_spec(model)
    if image_size is not None:
        spec = spec.at_image_size(image_size)
    example = spec.example_batch(batch, seq_len)
    chosen = [m.strip() for m in methods.split(",")] if methods else None
    console = Console(stderr=True)
    with working(console, "planning") as status:
        result = plan(model, profile, example, methods=chosen, measure_memory=measure,
                      progress=lambda m: status.update(f"measuring [bold]{m}[/] on {model}, batch {batch}"))
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        Console().print(plan_table(result))
        Console().print(f"recommended: [bold green]{result.recommended}[/] "
                        f"(the most accurate method that fits {profile.name}): "
                        f"pocketlearn train --model {model} {train_flags(result.recommended)} ...")


def plan_table(result: Plan) -> Table:
    budget = result.device.memory_budget_bytes
    table = Table(title=f"{result.device.name}: {format_bytes(budget)} budget, batch {result.batch_size}")
    for col in ("method", "trainable", "estimated", "measured", "vs inference", "step", "fits"):
        table.add_column(col, justify="left" if col == "method" else "right")
    inference_peak = result.inference.peak_bytes or 1
    for r in (result.inference, *result.rows):
        if not r.supported:
            note = r.note if len(r.note) <= 40 else r.note[:39] + "…"
            table.add_row(r.method, "", "", "", "", "", f"[dim]n/a: {note}[/]")
            continue
        m, e = r.measurement, r.estimate
        fits = "" if r.method == "inference" else ("[green]yes[/]" if r.fits else "[red]no[/]")
        table.add_row(r.method, f"{r.trainable_params:,}", format_bytes(e.total) if e else "",
                      format_bytes(m.peak_bytes) if m else "", f"{(r.peak_bytes or 0) / inference_peak:.2f}x",
                      f"{m.seconds_per_step * 1e3:.1f} ms" if m else "", fits)
    return table
