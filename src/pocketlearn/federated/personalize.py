"""Personalisation: each client's held-out data scored with the global model, then after local fine-tuning."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pocketlearn.evaluate import batches_of, evaluate
from pocketlearn.federated.clients import ClientData, InMemoryClients
from pocketlearn.federated.simulate import InProcessEngine, LocalTraining


def personalize(model: nn.Module, params: dict[str, Tensor], template: nn.Module, clients: ClientData,
                local: LocalTraining, *, num_clients: int, epochs: int, seed: int = 0, test_fraction: float = 0.2
                ) -> dict[str, Any]:
    """Fine-tune a copy of the global model on each of ``num_clients`` clients' own training part.

    A client's samples are split (seeded) into a local training part and a held-out part of at least one
    sample; clients with fewer than two samples are skipped. Returns per-client and mean accuracy/loss.
    """
    rng = np.random.default_rng([seed, 7])
    eligible = np.flatnonzero(clients.sizes >= 2)
    chosen = sorted(rng.choice(eligible, min(num_clients, len(eligible)), replace=False).tolist())
    cohort = clients.take(chosen)
    splits = []
    for idx in cohort.indices:
        idx = idx[rng.permutation(len(idx))]
        n_test = max(1, int(round(test_fraction * len(idx))))
        splits.append((np.sort(idx[n_test:]), idx[:n_test]))
    x, y = cohort.x, cohort.y
    engine = InProcessEngine(template, InMemoryClients(x, y, [train for train, _ in splits]), vectorize=False)
    tuned = engine.train(params, list(range(len(chosen))), 0, replace(local, epochs=epochs, proximal_mu=0.0))
    rows = []
    for k, c in enumerate(chosen):
        test = torch.from_numpy(splits[k][1])
        held_out = batches_of(x[test], y[test], 1024)
        before = evaluate(model, held_out)
        personal = copy.deepcopy(model)
        with torch.no_grad():
            for name, delta in tuned.updates.client_delta(k).items():
                personal.get_parameter(name).add_(delta)
        after = evaluate(personal, held_out)
        rows.append({"client": c, "test_samples": len(test), "accuracy_before": before["accuracy"],
                     "accuracy_after": after["accuracy"], "loss_before": before["loss"], "loss_after": after["loss"]})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("accuracy_before", "accuracy_after", "loss_before",
                                                               "loss_after")} if rows else {}
    return {"clients": rows, "mean": mean, "epochs": epochs}
