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
