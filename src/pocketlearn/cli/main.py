"""Entry point: ``pocketlearn --help``."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from pocketlearn.cli import (
    catalog,
    config,
    demo,
    export,
    fed,
    har,
    ids,
    keyboard,
    llm,
    plan,
    privacy,
    report,
    train,
    ui,
)
from pocketlearn.errors import PocketlearnError
from pocketlearn.extras import missing_extra

app = typer.Typer(help="Train neural networks where the data lives.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]})


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"pocketlearn {version('pocketlearn')}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                                   help="Print pocketlearn's version and exit.")] = False) -> None:
    """Train neural networks where the data lives."""

app.command("plan")(plan.plan_command)
app.command("train")(train.train_command)
app.command("demo")(demo.demo_command)
app.command("devices")(catalog.devices_command)
app.command("methods")(catalog.methods_command)
app.command("models")(catalog.models_command)
app.command("doctor")(catalog.doctor_command)
app.command("report")(report.report_command)
app.command("privacy")(privacy.privacy_command)
app.command("keyboard")(keyboard.keyboard_command)
app.command("ids")(ids.ids_command)
app.command("har")(har.har_command)
app.command("export")(export.export_command)
app.command("device-train")(export.device_train_command)
app.add_typer(fed.fed_app, name="fed")
app.add_typer(config.config_app, name="config")
app.add_typer(ui.ui_app, name="ui")
llm.register(app)  # generate, llm finetune, llm federated


def main() -> None:
    """Run the CLI, turning pocketlearn's own errors (and a missing extra) into one clear line and exit code 2."""
    try:
        app()
    except PocketlearnError as err:
        _fail(err)
    except ModuleNotFoundError as err:
        extra = missing_extra(err.name or "")
        if extra is None:
            raise
        _fail(extra)


def _fail(err: Exception) -> None:
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)  # one line
    sys.exit(2)


if __name__ == "__main__":
    main()
