"""One examples file per client, cut from a config's data exactly as ``fed simulate`` partitions it.

A device started with ``fed join --data client-00007.pt`` then trains on the samples the simulator's client 7
trains on, in the same order, so a deployment can be checked against a simulation of the same config.
"""

from __future__ import annotations

from pathlib import Path

from pocketlearn.federated.config import RunConfig


def write_partition(config: RunConfig, out_dir: Path, *, clients: list[int] | None = None) -> list[Path]:
    """Write ``client-NNNNN.pt`` for each client (or only ``clients``); meta names the client and the run."""
    import torch

    from pocketlearn.data.files import save_examples
    from pocketlearn.errors import ConfigError
    from pocketlearn.federated.experiment import load_federated_data

    data = load_federated_data(config)
    n = len(data.clients)
    chosen = range(n) if clients is None else clients
    bad = [c for c in chosen if not 0 <= c < n]
    if bad:
        raise ConfigError(f"clients {bad[:5]} do not exist; this config has clients 0..{n - 1}")
    width = max(5, len(str(n - 1)))
    paths = []
    for c in chosen:
        own = data.clients.take([c])  # a lazy population makes the client's samples here
        idx = torch.from_numpy(own.indices[0])
        path = out_dir / f"client-{c:0{width}d}.pt"
        name = data.client_names[c] if data.client_names else str(c)
        save_examples(path, own.x[idx], own.y[idx], client_id=int(c), client_name=name, dataset=config.data.name,
                      partition=config.data.partition, num_clients=n, data_seed=config.data.seed, run=config.name)
        paths.append(path)
    return paths
