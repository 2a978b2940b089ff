"""Secure aggregation between devices over Flower: the simulator's result, the server never holding an update."""

import numpy as np
import pytest
import torch

from pocketlearn.federated.experiment import build_server
from pocketlearn.federated.flower import secure
from pocketlearn.federated.metrics import read_metrics
from pocketlearn.federated.secagg import SecAggError
from pocketlearn.federated.secagg.messages import KeyShares, MaskedInput, UnmaskRequest, UnmaskResponse
from tests.federated.flower_local import LocalGrid, assert_same_params, config, deploy_in_process

SECAGG = {"enabled": True, "clip": 0.5, "threshold": 0.6}


@pytest.mark.parametrize("sections", [{}, {"secagg": {**SECAGG, "neighbours": 2}},
                                      {"client": {"method": "bias"}},
                                      {"codec": {"up": "topk0.1", "error_feedback": True}}],
                         ids=["all-pairs", "secagg+", "bias", "topk-error-feedback"])
def test_secure_rounds_over_flower_reach_the_simulators_weights_and_bytes(tmp_path, sections):
    cfg = config(**{"secagg": SECAGG, **sections})
    server, _ = build_server(cfg, None)
    simulated = server.run(cfg.rounds)
    summary, run_dir = deploy_in_process(cfg, tmp_path)
    assert_same_params(torch.load(run_dir / "state.pt")["params"], server.params, atol=1e-6)
    deployed = read_metrics(run_dir / "metrics.jsonl")
    assert [r["finished"] for r in deployed] == [5, 5, 5]
    assert [r["bytes_up"] for r in deployed] == [r.bytes_up for r in simulated]
    assert [r["bytes_down"] for r in deployed] == [r.bytes_down for r in simulated]
    assert sum(summary["traffic"]["bytes_up"].values()) == summary["bytes_up"]


class SpyGrid(LocalGrid):
    """Keeps every reply the server receives, to check none of them carries an update in the clear."""

    def __init__(self, *args, drop_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen, self.drop_at = [], drop_at or {}

    def push_messages(self, messages):
        for m in messages:  # a device that dies at a given step stops answering from then on
            if self.drop_at.get(m.metadata.dst_node_id) == m.metadata.message_type:
                self.dead.add(m.metadata.dst_node_id)
        ids = super().push_messages(messages)
        self.seen += [r for r in self.replies.values() if r not in self.seen]
        return ids


def _deploy_with(grid_type, cfg, tmp_path, **grid_kwargs):
    from pocketlearn.federated.flower.deploy import ServeSettings, run_rounds
    from pocketlearn.federated.flower.device import describe_examples
    from pocketlearn.federated.flower.partition import write_partition

    files = write_partition(cfg, tmp_path / "data")
    settings = ServeSettings(cfg, tmp_path / "run", round_timeout_s=0.5, min_devices=len(files), join_timeout_s=1.0)
    grid = grid_type([describe_examples(f, "laptop-16g").node_config() for f in files], settings.run_config(),
                     **grid_kwargs)
    return run_rounds(grid, settings.run_config(), say=lambda line: None), grid


def test_no_reply_the_server_receives_holds_a_clients_update(tmp_path):
    cfg = config(secagg=SECAGG, rounds=1)
    _, grid = _deploy_with(SpyGrid, cfg, tmp_path)
    from pocketlearn.federated.flower.messages import _payload_bytes

    payloads = [_payload_bytes(r.content["payload"]) for r in grid.seen if "payload" in r.content]
    size = sum(p.numel() for p in build_server(cfg, None)[0].params.values())
    masked = [p for p in payloads if len(p) == 4 + 4 * size]  # a client id, then uint32 ring elements
    assert len(masked) == 5 and max(len(p) for p in payloads) == 4 + 4 * size  # the rest is keys and shares
    for p in masked:  # uniformly random ring elements: no float32 update inside
        words = np.frombuffer(p[4:], np.uint32)
        assert 0.4 < words.mean() / 2**32 < 0.6 and len(np.unique(words)) > 0.99 * len(words)


def test_a_device_that_dies_after_sharing_keys_is_unmasked_away(tmp_path):
    cfg = config(secagg=SECAGG, rounds=2)
    summary, grid = _deploy_with(SpyGrid, cfg, tmp_path, drop_at={1002: secure.MASK})
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["finished"] for r in records] == [4, 4]  # its masks were removed with the others' shares
    # the sample-weighted mean of the four survivors, as the simulator computes it without the fifth
    reference, _ = build_server(cfg, None)
    for r in range(1, 3):
        results = reference.engine.train({n: p.clone() for n, p in reference.params.items()},
                                         [c for c in reference.sampler.sample(r).tolist() if c != 2], r,
                                         reference.local)
        reference.strategy.apply(reference.params, _mean(results.updates))
    assert_same_params(torch.load(tmp_path / "run" / "state.pt")["params"], reference.params, atol=2e-5)


def _mean(updates):
    from pocketlearn.federated.updates import RoundUpdates

    w = updates.num_samples / updates.num_samples.sum()
    rows = {n: (d * w.view(-1, *[1] * (d.dim() - 1))).sum(0, keepdim=True) for n, d in updates.deltas.items()}
    return RoundUpdates([-1], updates.num_samples.sum().view(1), rows)


def test_too_many_dropouts_leave_the_model_unchanged_and_fail_the_run(tmp_path):
    from pocketlearn.errors import TrainingError

    cfg = config(secagg={**SECAGG, "threshold": 1.0}, rounds=2)
    with pytest.raises(TrainingError, match="round 1 applied no update .secure aggregation failed"):
        _deploy_with(SpyGrid, cfg, tmp_path, drop_at={1001: secure.UNMASK, 1003: secure.UNMASK})
    start, _ = build_server(cfg, None)
    assert_same_params(torch.load(tmp_path / "run" / "state.pt")["params"], start.params, atol=0)
    [line] = read_metrics(tmp_path / "run" / "metrics.jsonl")  # the run stopped at its first failed round
    assert line["finished"] == 0 and line["failed"].startswith("secure aggregation failed")
    from pocketlearn.federated.flower.serve import _summary  # what `fed serve` reads back: it exits with the cause

    with pytest.raises(TrainingError, match="stopped after round 1: round 1 applied no update .secure aggregation"):
        _summary(tmp_path / "run", tmp_path / "serverapp.log")


def test_protocol_messages_read_back_and_refuse_garbage():
    request = UnmaskRequest(frozenset({0, 2}), frozenset({1}))
    assert UnmaskRequest.from_bytes(request.to_bytes()) == request
    masked = MaskedInput(3, np.arange(5, dtype=np.uint32))
    again = MaskedInput.from_bytes(masked.to_bytes(), np.dtype(np.uint32), 5)
    assert again.client == 3 and np.array_equal(again.vector, masked.vector)
    assert UnmaskResponse.from_bytes(UnmaskResponse(1, {}, {}).to_bytes()) == UnmaskResponse(1, {}, {})
    for parse, raw in [(KeyShares.from_bytes, b"\x00" * 7), (UnmaskRequest.from_bytes, request.to_bytes() + b"!"),
                       (lambda b: MaskedInput.from_bytes(b, np.dtype(np.uint32), 6), masked.to_bytes())]:
        with pytest.raises(SecAggError, match="truncated|too many"):
            parse(raw)


def test_a_device_without_this_rounds_state_sits_it_out():
    from flwr.app import RecordDict

    content = secure._records({"round": 4}, b"")
    with pytest.raises(SecAggError, match="no secure-aggregation state for round 4"):
        secure.device_mask(content, RecordDict())


def test_the_devices_example_with_16_devices_trains_over_flower_as_in_the_simulator(tmp_path):
    """Its threshold (0.6) with 4 neighbours used to need 10 of a client's 5 share holders at 16 devices."""
    from pocketlearn.federated.config import load_config

    cfg = load_config("examples/devices.toml", ["clients_per_round=16", "data.num_clients=16", "rounds=2"])
    server, _ = build_server(cfg, None)
    server.run(cfg.rounds)
    summary, run_dir = deploy_in_process(cfg, tmp_path)
    deployed = read_metrics(run_dir / "metrics.jsonl")
    assert [(r["finished"], r["failed"]) for r in deployed] == [(16, None), (16, None)]
    assert_same_params(torch.load(run_dir / "state.pt")["params"], server.params, atol=1e-6)
