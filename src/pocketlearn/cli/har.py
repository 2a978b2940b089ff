"""``pocketlearn har``: activity recognition personalised on each user's device, under a memory budget."""

from __future__ import annotations

from typing import Annotated

import typer

PRETRAIN_USERS = ",".join(str(u) for u in range(1, 21))  # the base model's users; 21-30 are personalised


def _ints(text: str) -> tuple[int, ...]:
    from pocketlearn.errors import ConfigError

    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError as err:
        raise ConfigError(f"--users takes comma-separated user ids (1-30), e.g. 25,26; got {text!r}") from err


def har_command(
    methods: Annotated[str, typer.Option(help="Comma-separated methods: backprop,bias,sparse,lora,mezo,binary.")
                       ] = "backprop,bias,sparse,lora,mezo,binary",
    device: Annotated[str | None, typer.Option(help="Run only methods whose measured step fits this device "
                                               "(e.g. mcu-512k); the others are reported with the bytes they "
                                               "need.")] = None,
    users: Annotated[str, typer.Option(help="Users to personalise (1-30), comma-separated.")] = "25,26,27,28,29,30",
    models: Annotated[str, typer.Option(help="Model variants: hapt-mlp (768-256-12), har-tiny (768-24-12, "
                                        "for MCUs).")] = "hapt-mlp,har-tiny",
    pretrain_users: Annotated[str, typer.Option(help="Users the base model is pretrained on.")
                              ] = PRETRAIN_USERS,
    epochs: Annotated[int, typer.Option(min=1, help="Personalisation epochs over a user's windows.")] = 5,
    federated: Annotated[int, typer.Option(min=0, help="Also run FedAvg over all 30 users for this many rounds "
                                           "(0: skip).")] = 0,
) -> None:
    """Pretrain on some users, personalise on each other user's first windows, score on their later windows."""
    from rich.console import Console

    from pocketlearn.apps.har.personalize import PersonalizeConfig, run_personalization
    from pocketlearn.apps.har.report import not_run, rich_table, summary_header, summary_rows, user_rows
    from pocketlearn.progress import working

    console = Console()
    config = PersonalizeConfig(pretrain_users=_ints(pretrain_users), users=_ints(users),
                               methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                               models=tuple(m.strip() for m in models.split(",") if m.strip()), device=device,
                               epochs=epochs)
    with working(console, "HAR") as status:
        result = run_personalization(config, on_progress=lambda msg: status.update(msg))
    for model in config.models:
        header, rows = user_rows(result, model)
        console.print(rich_table(f"{model}: accuracy on each user's later windows", header, rows))
    console.print(rich_table("Mean over users, and measured peak of a training step", summary_header(result),
                             summary_rows(result)))
    for line in not_run(result):
        console.print(f"[yellow]not run[/]: {line}")
    if federated:
        from pocketlearn.apps.har.federated import FederatedHarConfig, run_federated
        from pocketlearn.apps.har.report import federated_rows

        fed = run_federated(FederatedHarConfig(rounds=federated, eval_every=max(1, federated // 10)))
        console.print(rich_table("FedAvg over all 30 users (each scored on their later windows)",
                                 ["round", "accuracy", "bytes up"], federated_rows(fed)))
