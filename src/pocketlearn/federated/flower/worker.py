"""A ClientApp process that stays up between messages, in place of Flower's process per message.

With its default isolation a SuperNode starts a SuperExec, which starts a fresh ``flwr-clientapp`` process for
every message; each imports flwr, torch and pocketlearn again, seconds of a small device's time per message.
``flwr-clientapp`` cannot stay up instead: it takes the token of one task and exits after it. So ``fed join``
starts the SuperNode with ``--isolation process`` (no SuperExec) and this process beside it, which claims the
SuperNode's ClientApp tasks on its Runtime API as a SuperExec does and runs each one itself, with Flower's own
task input/output calls. The ClientApp and torch stay imported; ``Context.state`` still lives in the SuperNode,
which hands it to each task and keeps what the task pushes back, exactly as with a process per message.

Nothing is ever installed: the app named by the run's FAB is loaded from this environment.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import httpx
from flwr.app import Error, Message
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest, SendTaskHeartbeatRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.inflatable.inflatable_utils import ObjectPullError
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import RetryInvoker, exponential
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime import run_clientapp
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from pocketlearn.federated.flower.launch import APP_COMPONENTS

READY = "pocketlearn ClientApp worker ready"  # printed once the imports are done: the first message is quick too
# What the handlers import lazily, imported before the first message so that no message pays for it.
PRELOAD = ("pocketlearn.federated.flower.device", "pocketlearn.federated.flower.deploy",
           "pocketlearn.federated.flower.messages", "pocketlearn.federated.privacy.report",
           "pocketlearn.federated.experiment", "pocketlearn.federated.simulate", "pocketlearn.federated.server",
           "pocketlearn.federated.codecs", "pocketlearn.trainer", "pocketlearn.methods", "pocketlearn.data.files")
POLL_S = (0.05, 0.25)  # wait between task claims: the shortest right after a task, doubling up to the longest
TASK_RETRY_S = 30.0  # a task's calls retry an unreachable SuperNode this long, then the task is given up
TASK_PULL_S = 15.0  # a task whose message the SuperNode cannot hand over (2 h in Flower) is given up after this


class AppCache:
    """The ClientApp of each FAB this worker has run: installed (unpacked, never its dependencies) once."""

    def __init__(self) -> None:
        self.apps: dict[str, ClientApp] = {}

    def load(self, run: Run, fab: Fab) -> ClientApp:
        if fab.hash_str not in self.apps:
            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            self.apps[fab.hash_str] = load(run.fab_id, run.fab_version, fab.hash_str)
        return self.apps[fab.hash_str]


def runtime_client(address: str, token: str | None = None) -> RuntimeHttpClient:
    """A client of the SuperNode's Runtime API; with ``token``, one acting for that task (retrying a while).

    Flower's own retry suits a process per task only: it retries for ever and, when the SuperNode no longer
    knows the token, interrupts its whole process. Here a lost task is given up and the worker goes on.
    """
    interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp")]
    if token is None:  # claims: ``serve`` tries again at its own pace
        retry = None
    else:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
        retry = RetryInvoker(lambda: exponential(base_delay=0.1, max_delay=5), httpx.TransportError, max_tries=None,
                             max_time=TASK_RETRY_S)
    return RuntimeHttpClient.from_server_address(server_address=address, insecure=True, root_certificates=None,
                                                 interceptors=interceptors, retry_invoker=retry)


def heartbeat(client: RuntimeHttpClient) -> Callable[[], bool]:
    """Keep a task's claim alive while it trains; False (retry later) when the SuperNode is unreachable.

    Flower's own heartbeat interrupts its process when the SuperNode no longer knows the task: right for a
    process per task, wrong for this one, which would die with it. A forgotten task is simply not retried.
    """
    def beat() -> bool:
        try:
            client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
        except httpx.TransportError:
            return False
        except httpx.HTTPStatusError:
            pass  # the SuperNode refused the claim: nothing left to keep alive
        return True

    return beat


def run_task(address: str, token: str, apps: AppCache) -> None:
    """One claimed task: pull its message and context, run the ClientApp, push the reply and the context."""
    client = runtime_client(address, token)
    beats = HeartbeatSender(heartbeat(client))
    beats.start()
    context, status, details = None, SubStatus.FAILED, "the ClientApp did not run"
    try:
        message, context, run, fab = pull_task_input(client)
        try:
            reply = apps.load(run, fab)(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as err:  # noqa: BLE001 - the server gets an error reply, as from Flower's own ClientApp
            code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(err, LoadClientAppError) else \
                ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            details = f"{type(err).__name__}: {err}"
            print(f"the ClientApp raised {details}", file=sys.stderr, flush=True)
            reply = Message(Error(code=code, reason=details), reply_to=message)
        push_message(client, reply, context)
    finally:
        if beats.is_running:
            beats.stop()
        push_task_output(client=client, context=context, sub_status=status, details=details)
        client.close()


def serve(address: str) -> None:
    """Claim and run the SuperNode's ClientApp tasks one at a time, until this process is stopped."""
    acquirer, apps, wait = runtime_client(address), AppCache(), POLL_S[0]
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    while True:
        try:
            claimed = acquirer.AcquireTask(request)
        except httpx.HTTPError:  # the SuperNode is starting, or stopping: try again
            claimed = None
        if claimed is not None and claimed.HasField("task") and claimed.token:
            try:
                run_task(address, claimed.token, apps)
            except (httpx.HTTPError, RuntimeError, ObjectPullError) as err:  # the SuperNode answers the server
                print(f"gave up a task the SuperNode could not serve: {err}", file=sys.stderr, flush=True)
            wait = POLL_S[0]
            continue
        time.sleep(wait)
        wait = min(2 * wait, POLL_S[1])


def bound_message_pulls() -> None:
    """Give up a task whose message cannot be pulled after TASK_PULL_S, not Flower's two hours.

    A task of a run the server abandoned (it crashed mid-round) can lose its message's objects; a process per
    task would hang alone, this worker would hang every later task behind it. The SuperNode pulled the objects
    before it offered the task (a pull is a local call), so 15 s is plenty; a stale task blocks the
    worker no longer than that. (``pull_task_input`` reads the function from its module.)
    """
    pull = run_clientapp.pull_and_inflate_object_from_tree
    if not isinstance(pull, functools.partial):
        run_clientapp.pull_and_inflate_object_from_tree = functools.partial(pull, max_time=TASK_PULL_S)


def preload() -> None:
    """Import the ClientApp and what its handlers import, so the first message is as quick as the others.

    The ClientApp's module must import; a module of PRELOAD that no longer exists only costs speed.
    """
    module, _, _ = APP_COMPONENTS["clientapp"].partition(":")
    importlib.import_module(module)
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as err:
            print(f"not preloaded: {name} ({err}); the first message imports what it needs", file=sys.stderr)


def _exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, HOST:PORT")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit)
    bound_message_pulls()
    try:
        preload()
        print(READY, flush=True)
        serve(args.runtime_api_address)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: ``fed join`` stops too
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a SIGTERM while exiting must not raise in atexit hooks
    return 0


if __name__ == "__main__":
    sys.exit(main())
