"""``pocketlearn devices | methods | models``: what is available."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from pocketlearn.devices import PRESETS, format_bytes

if TYPE_CHECKING:
    from pocketlearn.methods import TrainingMethod


def devices_command() -> None:
    """List the device presets (memory budget, compute, bandwidth, availability)."""
    table = Table("device", "memory budget", "compute", "uplink", "downlink", "availability", "what it is")
    for p in PRESETS.values():
        table.add_row(p.name, format_bytes(p.memory_budget_bytes), f"{p.compute:g}",
                      f"{format_bytes(p.uplink_bytes_per_s)}/s", f"{format_bytes(p.downlink_bytes_per_s)}/s",
                      f"{p.availability:.0%}", p.description)
    Console().print(table)


def methods_command() -> None:
    """List the training methods and their options."""
    import inspect
    from dataclasses import fields

    from pocketlearn.methods import available_methods, get_method_class

    table = Table("method", "what it does", "options", "also runs in")
    for name in available_methods():
        cls = get_method_class(name)
        doc = (inspect.getdoc(cls) or "").partition("\n")[0]
        opts = ", ".join(f"{f.name}={f.default!r}" for f in fields(cls.config_cls))
        table.add_row(name, doc, opts, _runs_in(cls))
    Console().print(table)


def _runs_in(cls: type[TrainingMethod]) -> str:
    """Where a method can train besides `train`: mixed-method federated runs, exported device programs."""
    places = [f"mixed runs ({cls.wire_kind})"] if cls.wire_kind else []
    return ", ".join(places + (["export"] if cls.exportable else []))


def models_command() -> None:
    """List the models pocketlearn can build by name."""
    from pocketlearn.models import MODELS

    table = Table("model", "task", "what it is")
    for spec in MODELS.values():
        table.add_row(spec.name, spec.task, spec.description)
    Console().print(table)
    Console().print("or your own: --model (or [model] name) package.module:function, a function returning an "
                    "nn.Module", highlight=False)


def doctor_command() -> None:
    """Which optional data sets, models and libraries are installed, what each one enables, how to add it."""
    from pocketlearn.doctor import check_all

    table = Table("component", "status", "enables", "install")
    missing = 0
    for check in check_all():
        missing += not check.found
        status = f"[green]yes[/] {check.where}" if check.found else "[red]no[/]"
        table.add_row(check.name, status, check.enables, "" if check.found else check.install)
    Console().print(table)
    Console().print(f"{missing} missing; pocketlearn runs without them, and the commands that need one say so."
                    if missing else "everything is installed.")
