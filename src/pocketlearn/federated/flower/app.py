"""The Flower apps a pocketlearn deployment runs: ``server_app`` on the SuperLink side, ``client_app`` on devices.

Flower loads them by reference (``pocketlearn.federated.flower.app:server_app``) from the installed package,
so the app bundle ``fed serve`` submits holds nothing but its ``pyproject.toml``. Heavy imports (torch) wait
inside the handlers: a ``query`` message is answered from the node config alone.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from pocketlearn.errors import PocketlearnError

server_app = ServerApp()
client_app = ClientApp()

APP_ERROR = 100  # Error.code of a reply a pocketlearn handler refused (the reason says why and how to fix it)


@server_app.main()
def _serve(grid: Grid, context: Context) -> None:
    from pocketlearn.federated.flower.deploy import run_rounds

    run_rounds(grid, context.run_config, say=lambda line: print(line, flush=True))


@client_app.query()
def _query(message: Message, context: Context) -> Message:
    from pocketlearn.federated.flower.device import DeviceSetup

    return _reply(message, lambda: DeviceSetup.from_node_config(context.node_config).info().to_records())


@client_app.train()
def _train(message: Message, context: Context) -> Message:
    def work() -> Any:
        from pocketlearn.federated.flower.deploy import run_config_of
        from pocketlearn.federated.flower.device import DeviceSetup, train_request
        from pocketlearn.federated.flower.messages import TrainRequest

        setup = DeviceSetup.from_node_config(context.node_config)
        request = TrainRequest.from_records(message.content)
        return train_request(request, run_config_of(context.run_config), setup).to_records()

    return _reply(message, work)


@client_app.train("secagg")
def _secure_train(message: Message, context: Context) -> Message:
    def work() -> Any:
        from pocketlearn.federated.flower.deploy import run_config_of
        from pocketlearn.federated.flower.device import DeviceSetup, train_request
        from pocketlearn.federated.flower.secure import device_train

        setup, config = DeviceSetup.from_node_config(context.node_config), run_config_of(context.run_config)
        return device_train(message.content, context.state, lambda request: train_request(request, config, setup))

    return _reply(message, work)


@client_app.query("secagg_share")
def _secure_share(message: Message, context: Context) -> Message:
    from pocketlearn.federated.flower.secure import device_share

    return _reply(message, lambda: device_share(message.content, context.state))


@client_app.query("secagg_mask")
def _secure_mask(message: Message, context: Context) -> Message:
    from pocketlearn.federated.flower.secure import device_mask

    return _reply(message, lambda: device_mask(message.content, context.state))


@client_app.query("secagg_unmask")
def _secure_unmask(message: Message, context: Context) -> Message:
    from pocketlearn.federated.flower.secure import device_unmask

    return _reply(message, lambda: device_unmask(message.content, context.state))


def _reply(message: Message, work: Any) -> Message:
    """The handler's records as the reply; a pocketlearn error becomes an error reply naming the fix."""
    try:
        return Message(work(), reply_to=message)
    except PocketlearnError as err:
        return Message(Error(APP_ERROR, f"{type(err).__name__}: {err}"), reply_to=message)
