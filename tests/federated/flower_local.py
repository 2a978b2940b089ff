"""Deployment without a network: Flower messages routed to the ClientApp in this process, node state kept.

Shared by the Flower tests: a ``LocalGrid`` stands in for the ServerApp's Grid, ``deploy_in_process`` runs the
ServerApp's loop on it, and ``simulated`` runs the same config in ``fed simulate``'s loop.
"""

import json

import torch

from pocketlearn.federated.config import parse_config
from pocketlearn.federated.experiment import build_server
from pocketlearn.federated.flower.deploy import ServeSettings, run_rounds
from pocketlearn.federated.flower.device import describe_examples
from pocketlearn.federated.flower.partition import write_partition

CONFIG = {"name": "dep", "rounds": 3, "clients_per_round": 5, "model": {"name": "digits-mlp"},
          "data": {"name": "digits", "partition": "dirichlet", "num_clients": 5},
          "devices": {"availability": False}, "eval": {"every": 1}}


def config(**sections):
    return parse_config({**json.loads(json.dumps(CONFIG)), **sections})


def simulated_params(cfg):
    server, _ = build_server(cfg, None)
    server.run(cfg.rounds)
    return server.params


def assert_same_params(a, b, atol=1e-5):
    assert set(a) == set(b)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol), (name, (a[name] - b[name]).abs().max().item())


class LocalGrid:
    """A Flower Grid whose nodes are ClientApp calls in this process (``dead`` nodes never answer).

    Each node keeps its ``Context.state`` across messages, as a SuperNode does within a run.
    """

    def __init__(self, node_configs, run_config, dead=(), garbled=()):
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # what a ServerApp process has
        self.nodes = {1000 + i: nc for i, nc in enumerate(node_configs)}
        self.run_config, self.dead, self.garbled, self.replies = run_config, set(dead), set(garbled), {}
        self.states = {}

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, messages):
        from flwr.app import Context, RecordDict

        from pocketlearn.federated.flower.app import client_app

        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
            ids.append(m.metadata.message_id)
            node = m.metadata.dst_node_id
            if node not in self.dead:
                context = Context(1, node, self.nodes[node], self.states.setdefault(node, RecordDict()),
                                  self.run_config)
                reply = client_app(m, context)
                if node in self.garbled:  # a device (or something posing as one) that answers nonsense
                    reply.content = RecordDict()
                self.replies[m.metadata.message_id] = reply
        return ids

    def pull_messages(self, ids):
        return [self.replies.pop(i) for i in list(ids) if i in self.replies]


def deploy_in_process(cfg, tmp_path, dead=(), round_timeout_s=5.0, garbled=(), devices=None):
    """``fed serve`` on a LocalGrid with one node per client (``devices``: each one's preset, default a laptop)."""
    files = write_partition(cfg, tmp_path / "data")
    devices = devices or ["laptop-16g"] * len(files)
    nodes = [describe_examples(f, d).node_config() for f, d in zip(files, devices, strict=True)]
    settings = ServeSettings(cfg, tmp_path / "run", round_timeout_s=round_timeout_s, min_devices=len(files),
                             join_timeout_s=1.0)
    grid = LocalGrid(nodes, settings.run_config(), [1000 + d for d in dead], [1000 + g for g in garbled])
    return run_rounds(grid, settings.run_config(), say=lambda line: None), tmp_path / "run"
