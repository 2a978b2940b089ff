"""The Flower server loop against devices that answer with anything at all: a bad reply costs only its device.

Messages are routed in this process (``flower_local.LocalGrid``); each tampering below rewrites one device's
reply to its ``train`` message before the engine reads it.
"""

import logging
import math

import numpy as np
import pytest
import torch

from pocketlearn.federated.codecs import make_codec
from pocketlearn.federated.flower.deploy import ServeSettings, run_rounds
from pocketlearn.federated.flower.device import describe_examples
from pocketlearn.federated.flower.messages import _payload_record
from pocketlearn.federated.flower.partition import write_partition
from pocketlearn.federated.metrics import read_metrics
from tests.federated.flower_local import LocalGrid, config


def _payload(reply):
    return bytes(reply.content["payload"]["bytes"].numpy().tobytes())


def _set_payload(reply, raw):
    reply.content["payload"] = _payload_record(raw)


def _reshaped(reply):  # same number of values, a matrix flattened
    delta = make_codec("float32").decode(_payload(reply))
    first = next(n for n in sorted(delta) if delta[n].dim() == 2)
    _set_payload(reply, make_codec("float32").encode({**delta, first: delta[first].reshape(-1)}))


def _extra_tensor(reply):
    delta = make_codec("float32").decode(_payload(reply))
    _set_payload(reply, make_codec("float32").encode({**delta, "stowaway": torch.zeros(10**4)}))


def _nan(reply):
    delta = make_codec("float32").decode(_payload(reply))
    first = sorted(delta)[0]
    poisoned = delta[first].clone()
    poisoned.view(-1)[0] = math.nan
    _set_payload(reply, make_codec("float32").encode({**delta, first: poisoned}))


def _meta(key, value):
    def tamper(reply):
        reply.content["meta"][key] = value
    return tamper


def _drop(key):
    def tamper(reply):
        del reply.content[key]
    return tamper


TAMPER = {
    "garbage-payload": lambda r: _set_payload(r, b"PLF\x01" + bytes(40)),
    "null-arrays": lambda r: _set_payload(r, b"PLF\x01" + len(b'{"arrays": null}').to_bytes(4, "little")
                                          + b'{"arrays": null}'),
    "wrong-shape": _reshaped,
    "extra-tensor": _extra_tensor,
    "nan-update": _nan,
    "other-client": _meta("client-id", 3),
    "huge-sample-count": _meta("num-samples", 10**9),  # would outweigh every other device in the mean
    "zero-samples": _meta("num-samples", 0),
    "text-sample-count": _meta("num-samples", "many"),
    "nan-loss": _meta("loss", math.nan),
    "negative-seconds": _meta("seconds", -1.0),
    "no-meta": _drop("meta"),
    "no-payload": _drop("payload"),
}


class TamperingGrid(LocalGrid):
    """A LocalGrid whose listed nodes' ``train`` replies are rewritten before the server pulls them."""

    def __init__(self, *args, tamper=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tamper = tamper or {}

    def push_messages(self, messages):
        ids = super().push_messages(messages)
        for m, i in zip(messages, ids, strict=True):
            fn = self.tamper.get(m.metadata.dst_node_id)
            if fn is not None and m.metadata.message_type == "train" and i in self.replies:
                fn(self.replies[i])
        return ids


def _deploy(tmp_path, tamper, rounds=1):
    cfg = config(rounds=rounds)
    files = write_partition(cfg, tmp_path / "data")
    nodes = [describe_examples(f, "laptop-16g").node_config() for f in files]
    settings = ServeSettings(cfg, tmp_path / "run", round_timeout_s=5.0, min_devices=len(files), join_timeout_s=1.0)
    grid = TamperingGrid(nodes, settings.run_config(), tamper={1000 + c: fn for c, fn in tamper.items()})
    summary = run_rounds(grid, settings.run_config(), say=lambda line: None)
    return summary, read_metrics(tmp_path / "run" / "metrics.jsonl")


@pytest.mark.parametrize("kinds", [list(TAMPER)[i:i + 4] for i in range(0, len(TAMPER), 4)],
                         ids=lambda kinds: "+".join(kinds))
def test_a_malformed_reply_leaves_only_its_device_out_with_a_logged_reason(tmp_path, caplog, kinds):
    tamper = {c: TAMPER[k] for c, k in enumerate(kinds)}  # clients 0..3 misbehave, client 4 answers well
    with caplog.at_level(logging.WARNING, logger="pocketlearn.federated.flower.engine"):
        summary, records = _deploy(tmp_path, tamper)
    assert [r["finished"] for r in records] == [5 - len(kinds)] and summary["rounds"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for c, kind in enumerate(kinds):
        said = [w for w in warnings if f"SuperNode {1000 + c} (client {c}) left out" in w]
        assert len(said) == 1, (kind, warnings)
    assert not any("client 4)" in w for w in warnings)


def test_the_engine_decodes_against_the_shapes_the_device_should_send(tmp_path, monkeypatch):
    from pocketlearn.federated.codecs import Codec

    seen = []
    original = Codec.decode

    def spy(self, payload, expected=None):
        seen.append(expected)
        return original(self, payload, expected)

    monkeypatch.setattr(Codec, "decode", spy)
    _deploy(tmp_path, {})
    from pocketlearn.federated.experiment import build_server

    server, _ = build_server(config(rounds=1), None)
    shapes = {n: p.shape for n, p in server.params.items()}
    uplink = [e for e in seen if e is not None]
    assert len(uplink) == 5 and all(e == shapes for e in uplink)
    assert all(isinstance(s, torch.Size) for e in uplink for s in e.values())


def test_a_seed_history_longer_than_the_device_could_train_is_refused(tmp_path, caplog):
    from pocketlearn.federated.codecs.seeds import encode_history

    def flood(reply):  # 10^5 (seed, g) pairs: the server would replay them all
        _set_payload(reply, encode_history([(int(s), 0.0) for s in np.arange(10**5)]))

    cfg_sections = {"client": {"method": "mezo", "lr": 1e-3, "options": {"eps": 1e-3}}, "codec": {"up": "seeds"}}
    cfg = config(rounds=1, **cfg_sections)
    files = write_partition(cfg, tmp_path / "data")
    nodes = [describe_examples(f, "laptop-16g").node_config() for f in files]
    settings = ServeSettings(cfg, tmp_path / "run", round_timeout_s=5.0, min_devices=len(files), join_timeout_s=1.0)
    grid = TamperingGrid(nodes, settings.run_config(), tamper={1002: flood})
    with caplog.at_level(logging.WARNING, logger="pocketlearn.federated.flower.engine"):
        run_rounds(grid, settings.run_config(), say=lambda line: None)
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[0]["finished"] == 4
    assert any("SuperNode 1002 (client 2)" in r.getMessage() and "(seed, g) pairs" in r.getMessage()
               for r in caplog.records)


# --- a restarted server starts with the devices that are alive --------------------------------------------------
class CrashingGrid(LocalGrid):
    """The server process dies as it sends round ``crash_at``'s work (after round ``crash_at - 1``'s checkpoint)."""

    def __init__(self, *args, crash_at, **kwargs):
        super().__init__(*args, **kwargs)
        self.crash_at = crash_at

    def push_messages(self, messages):
        if any(m.metadata.group_id == str(self.crash_at) for m in messages):
            raise SystemExit("the server crashed")
        return super().push_messages(messages)


def test_a_restarted_server_does_not_wait_the_join_timeout_for_a_device_that_died_before_the_crash(
        tmp_path, monkeypatch):
    from pocketlearn.federated.flower.engine import FlowerEngine

    monkeypatch.setattr(FlowerEngine, "resume_settle_s", 0.5, raising=False)
    cfg = config(rounds=2)
    files = write_partition(cfg, tmp_path / "data")
    nodes = [describe_examples(f, "laptop-16g").node_config() for f in files]
    first = ServeSettings(cfg, tmp_path / "run", round_timeout_s=5.0, min_devices=0, join_timeout_s=5.0)
    with pytest.raises(SystemExit):
        run_rounds(CrashingGrid(nodes, first.run_config(), crash_at=2), first.run_config(), say=lambda line: None)
    assert [r["finished"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [5]
    # client 2's device died before the crash: Flower no longer lists its node; the other four are connected
    again = ServeSettings(cfg, tmp_path / "run", round_timeout_s=5.0, min_devices=0, join_timeout_s=60.0)
    grid = LocalGrid(nodes, again.run_config())
    del grid.nodes[1002]
    said = []
    summary = run_rounds(grid, again.run_config(), say=said.append)
    assert any(line.startswith("resuming") for line in said)
    assert summary["setup_s"] < 30, said  # (it waited the whole 60 s join timeout for client 2 before)
    assert [r["finished"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [5, 4]
    assert "resuming with the 4 device(s) still in the run" in "\n".join(said)


@pytest.mark.parametrize("rnd", [0, 1], ids=["first-run", "resumed"])
def test_only_a_resumed_run_starts_before_all_its_devices_joined(tmp_path, rnd):
    import time

    from pocketlearn.federated.flower.engine import FlowerEngine

    cfg = config()
    files = write_partition(cfg, tmp_path / "data", clients=[0, 1])  # two devices of five have started
    nodes = [describe_examples(f, "laptop-16g").node_config() for f in files]
    settings = ServeSettings(cfg, tmp_path / "run")
    engine = FlowerEngine(LocalGrid(nodes, settings.run_config()), round_timeout_s=1.0, poll_s=0.01,
                          say=lambda line: None)
    engine.resume_settle_s = 0.2
    engine.num_clients = 5
    t0 = time.monotonic()
    assert engine.wait_for_devices(5, timeout_s=3.0, resumed=rnd > 0) == 2
    waited = time.monotonic() - t0
    assert waited >= 3.0 if rnd == 0 else waited < 2.0  # a first run's devices may still be starting


class BusyFirstGrid(LocalGrid):
    """Node 1000's worker is busy with a task of the crashed run: its first query expires unanswered."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.busy = {1000}

    def push_messages(self, messages):
        busy = [m for m in messages if m.metadata.dst_node_id in self.busy]
        self.busy -= {m.metadata.dst_node_id for m in busy}
        return [m.object_id for m in busy] + super().push_messages([m for m in messages if m not in busy])


def test_a_resumed_run_asks_a_node_that_missed_its_first_query_again_before_it_starts(tmp_path):
    from pocketlearn.federated.flower.engine import FlowerEngine

    cfg = config()
    files = write_partition(cfg, tmp_path / "data")
    nodes = [describe_examples(f, "laptop-16g").node_config() for f in files]
    grid = BusyFirstGrid(nodes, ServeSettings(cfg, tmp_path / "run").run_config())
    engine = FlowerEngine(grid, round_timeout_s=1.0, query_timeout_s=0.5, poll_s=0.01, say=lambda line: None)
    engine.resume_settle_s = 0.2  # shorter than the wait before a node that missed once is asked again
    engine.num_clients = 5
    assert engine.wait_for_devices(5, timeout_s=20.0, resumed=True) == 5  # (4 before: the busy node counted as gone)
