"""``fed join``'s processes: the SuperNode's command, the long-lived ClientApp worker and its supervision.

The worker is checked against a real SuperNode Runtime API (Flower's own, served in this process) with messages
put into its NodeState as the SuperNode's Fleet loop would: replies, error replies, and ``Context.state``
carried from one message to the next.
"""

import hashlib
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from pocketlearn.federated.flower.device import DeviceSetup
from pocketlearn.federated.flower.join import JoinOptions, Worker, supernode_command, worker_command
from pocketlearn.federated.flower.launch import LaunchError, flower_env, write_app

counting_app = ClientApp()  # the test's ClientApp: counts its messages in Context.state


@counting_app.query()
def _count(message, context):
    seen = context.state.get("count", ConfigRecord({"n": 0}))
    if message.content.get("boom") is not None:
        raise ValueError("boom as asked")
    context.state["count"] = ConfigRecord({"n": int(seen["n"]) + 1})
    return Message(RecordDict({"count": ConfigRecord({"n": int(seen["n"]) + 1})}), reply_to=message)


def test_the_supernode_leaves_its_tasks_to_our_worker_and_installs_nothing(tmp_path):
    setup = DeviceSetup(tmp_path / "c.pt", "laptop-16g", 3, 10)
    cmd = supernode_command(setup, JoinOptions("127.0.0.1:9092", insecure=True), tmp_path, 4567)
    assert cmd[cmd.index("--isolation") + 1] == "process"
    assert cmd[cmd.index("--port") + 1] == "4567" and "127.0.0.1" in cmd
    assert not any("dependency" in part for part in cmd)
    assert worker_command(4567)[-2:] == ["--runtime-api-address", "127.0.0.1:4567"]
    assert 'client-id = 3' in (tmp_path / "node-config.toml").read_text()


def _exits_with(code):
    return [sys.executable, "-c", f"import sys; sys.exit({code})"]


def test_a_worker_that_exits_is_started_again_and_one_that_keeps_failing_stops_join():
    said = []
    worker = Worker(_exits_with(3), {}, said.append, settle_s=3600, max_quick_exits=3)
    worker.start()
    for _ in range(2):
        worker.proc.wait()
        worker.check()  # started again
    assert said == ["the ClientApp worker exited with code 3; starting it again"] * 2
    worker.proc.wait()
    with pytest.raises(LaunchError, match="exited 3 times in a row.*last exit code 3"):
        worker.check()


def test_a_worker_that_ran_a_while_before_exiting_is_always_started_again():
    worker = Worker(_exits_with(1), {}, lambda _: None, settle_s=0.0, max_quick_exits=1)
    worker.start()
    for _ in range(3):
        worker.proc.wait()
        worker.check()
    worker.stop()


def test_stopping_the_worker_ends_its_process():
    worker = Worker([sys.executable, "-c", "import time; time.sleep(600)"], {}, lambda _: None)
    worker.start()
    worker.stop()
    assert worker.proc.poll() is not None


# --- the worker against a SuperNode's Runtime API ---------------------------------------------------------------
class RuntimeApi:
    """Flower's SuperNode Runtime API on 127.0.0.1, its NodeState at hand to put messages in as the SuperNode does."""

    def __init__(self, app_dir: Path):
        import uvicorn
        from flwr.cli.build import build_fab_from_disk
        from flwr.supercore.fab import Fab
        from flwr.supercore.object_store import ObjectStoreFactory
        from flwr.supercore.run import Run
        from flwr.supernode.main import create_app
        from flwr.supernode.nodestate import NodeStateFactory

        self.state = NodeStateFactory(objectstore_factory=ObjectStoreFactory()).state()
        self.state.set_node_id(7)
        content = build_fab_from_disk(app_dir)
        fab = Fab(hashlib.sha256(content).hexdigest(), content, {})
        self.run = replace(Run.create_empty(1), fab_id="pocketlearn/pocketlearn-run", fab_version="1.0.0",
                           fab_hash=fab.hash_str)
        self.state.store_run(self.run)
        self.state.store_fab(fab)
        self.state.set_run_series_context(self.run.series_id, Context(1, 7, {}, RecordDict(), {}))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{s.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(state_factory=_Fixed(self.state)), host="127.0.0.1",
                                                    port=int(self.address.split(":")[1]), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            time.sleep(0.05)

    def send(self, content: RecordDict):
        """A message from the server, stored with a task for it, as the SuperNode's Fleet loop stores one."""
        from flwr.supercore.constant import TaskType
        from flwr.supercore.task_identity import TaskIdentity
        from flwr.supernode.start_client_internal import _insert_message

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # the ServerApp's side
        message = Message(content, dst_node_id=7, message_type="query")
        _insert_message(message, self.state, self.state.object_store)
        self.state.create_task(task_type=TaskType.CLIENT_APP, run_id=1, fab_hash=self.run.fab_hash)
        return message

    def context(self):
        return self.state.get_run_series_context(self.run.series_id)

    def replies(self):
        return list(self.state.get_messages_legacy(is_reply=True))

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


class _Fixed:
    """A NodeStateFactory that hands out one NodeState (the test's)."""

    def __init__(self, state):
        self._state = state

    def state(self):
        return self._state


@pytest.fixture
def runtime_api(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    counting = "tests.federated.test_flower_join:counting_app"
    app_dir = write_app(tmp_path / "app", {}, components={"serverapp": counting, "clientapp": counting})
    api = RuntimeApi(app_dir)
    try:
        yield api
    finally:
        api.stop()


def _run_next_task(api, apps):
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType

    from pocketlearn.federated.flower.worker import run_task, runtime_client

    claimed = runtime_client(api.address).AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
    assert claimed.HasField("task") and claimed.token
    run_task(api.address, claimed.token, apps)


def test_one_worker_runs_message_after_message_and_context_state_carries_over(runtime_api):
    from pocketlearn.federated.flower.worker import AppCache

    apps = AppCache()
    counts = []
    for _ in range(3):
        sent = runtime_api.send(RecordDict())
        _run_next_task(runtime_api, apps)
        (reply,) = runtime_api.replies()  # (its content is in the SuperNode's object store, on its way out)
        assert reply.metadata.reply_to_message_id == sent.metadata.message_id and not reply.has_error()
        counts.append(int(runtime_api.context().state["count"]["n"]))
    assert counts == [1, 2, 3]  # each task's Context.state went back to the SuperNode, and on to the next task
    assert len(apps.apps) == 1  # the app was installed and loaded once


def test_a_raising_handler_becomes_an_error_reply_and_the_worker_goes_on(runtime_api):
    from flwr.common.constant import ErrorCode

    from pocketlearn.federated.flower.worker import AppCache

    apps = AppCache()
    runtime_api.send(RecordDict({"boom": ConfigRecord({"x": 1})}))
    _run_next_task(runtime_api, apps)
    (reply,) = runtime_api.replies()
    assert reply.has_error() and reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert "boom as asked" in reply.error.reason
    runtime_api.send(RecordDict())
    _run_next_task(runtime_api, apps)
    (reply,) = runtime_api.replies()
    assert not reply.has_error() and int(runtime_api.context().state["count"]["n"]) == 1


def test_a_task_whose_message_cannot_be_pulled_is_given_up_and_the_next_one_runs(runtime_api, monkeypatch):
    """A restarted server leaves tasks of its abandoned run whose message objects are gone: not a 2-hour hang."""
    from flwr.supercore.inflatable.inflatable_utils import ObjectPullError
    from flwr.supernode.runtime import run_clientapp

    from pocketlearn.federated.flower import worker

    monkeypatch.setattr(worker, "TASK_PULL_S", 1.0)
    monkeypatch.setattr(run_clientapp, "pull_and_inflate_object_from_tree",
                        run_clientapp.pull_and_inflate_object_from_tree)  # restored after the test
    worker.bound_message_pulls()
    apps = worker.AppCache()
    runtime_api.send(RecordDict({"n": ConfigRecord({"x": 1})}))
    store = runtime_api.state.object_store
    for entry in store.store.values():  # registered, content never arrived: what a stale task's pull finds
        entry.content = b""
    with pytest.raises(ObjectPullError):
        _run_next_task(runtime_api, apps)
    runtime_api.send(RecordDict())
    _run_next_task(runtime_api, apps)
    assert any(not r.has_error() for r in runtime_api.replies())


def test_join_without_a_server_says_so_in_one_line_on_stderr_after_max_wait(tmp_path, capfd):
    from pocketlearn.federated.flower.join import join

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    setup = DeviceSetup(tmp_path / "c.pt", "laptop-16g", 0, 10)
    options = JoinOptions(f"127.0.0.1:{port}", insecure=True, home=tmp_path / "home", max_wait_s=2)
    code = join(setup, options, say=lambda _: None)
    out, err = capfd.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: fed join: no server answered at 127.0.0.1:")
    assert "connection refused" in err and "--max-wait 2 s" in err and "fed serve" in err
    assert "\x1b" not in out + err and "Uvicorn" not in out + err and "Connection attempt" not in out + err


def test_flower_processes_import_a_users_model_from_the_folder_the_command_ran_in(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text("def net(): ...\n")
    monkeypatch.chdir(tmp_path)  # where `fed serve` / `fed join` runs; Flower's processes may run elsewhere
    env = flower_env(tmp_path / "home")
    done = subprocess.run([sys.executable, "-c", "import my_nets"], cwd=tmp_path / "home", env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
