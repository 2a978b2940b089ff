"""benchmarks/scale.py's workload with Apple pfl-research's simulated FederatedAveraging, for a side-by-side row.

    PYTHONPATH=REPO/src .anchors-venv/bin/python scale_pfl.py --population N --cohort K --rounds R --out r.json

Runs in the anchors' venv (pfl and pocketlearn cannot share one). The clients are pocketlearn's own
`SyntheticClients` (imported from REPO/src: it needs only numpy and torch), so both frameworks train on the
same data: LEAF's Synthetic(0.5, 0.5), client sizes LogNormal(mean 30, sigma 1), seed 0. pfl makes a client's
dataset when its sampler names it (`FederatedDataset(make_dataset_fn, user_sampler)`), so its memory too is
the cohort's. Each round's cohort is drawn as pocketlearn draws it (`choice(N, K, replace=False)`).
Model: logistic regression 60-10; local: 1 epoch of plain SGD, lr 0.1, batch 10; sample-weighted FedAvg
(pfl's WeightByDatapoints, central SGD with lr 1). Writes rounds' times and the test accuracy as JSON.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from pfl.aggregate.simulate import SimulatedBackend
from pfl.aggregate.weighting import WeightByDatapoints
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
from pfl.callback.base import TrainingProcessCallback
from pfl.data.dataset import Dataset
from pfl.data.federated_dataset import FederatedDataset
from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
from pfl.metrics import Metrics, Weighted
from pfl.model.pytorch import PyTorchModel

from pocketlearn.data.synthetic import CLASSES, DIM, Synthetic
from pocketlearn.federated.clients import SyntheticClients

SEED, MEAN_SIZE, SIGMA, LR, BATCH = 0, 30, 1.0, 0.1, 10
TEST_CLIENTS, TEST_SAMPLES = 200, 20  # pocketlearn's test set for data.name = "synthetic"


class LogReg(torch.nn.Linear):
    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(x), y)

    @torch.no_grad()
    def metrics(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Weighted]:
        correct = (self(x).argmax(1) == y).sum().item()
        return {"accuracy": Weighted(correct, len(y))}


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--population", type=int, required=True)
    args.add_argument("--cohort", type=int, required=True)
    args.add_argument("--rounds", type=int, required=True)
    args.add_argument("--out", required=True)
    a = args.parse_args()
    started = time.perf_counter()
    source = Synthetic(0.5, 0.5, SEED)
    clients = SyntheticClients(source, a.population, MEAN_SIZE, SIGMA)
    rng = np.random.default_rng([SEED, 2])
    queue: list[int] = []

    def user_sampler() -> int:
        if not queue:
            queue.extend(np.sort(rng.choice(a.population, min(a.cohort, a.population), replace=False)).tolist())
        return queue.pop(0)

    def make_dataset_fn(user_id: int) -> Dataset:
        cohort = clients.take([user_id])
        return Dataset(raw_data=[cohort.x, cohort.y], user_id=user_id)

    np.random.seed(SEED)  # pfl draws internal seeds from numpy's global RNG
    torch.manual_seed(SEED)
    net = LogReg(DIM, CLASSES)
    model = PyTorchModel(model=net, local_optimizer_create=torch.optim.SGD,
                         central_optimizer=torch.optim.SGD(net.parameters(), lr=1.0))
    backend = SimulatedBackend(training_data=FederatedDataset(make_dataset_fn, user_sampler), val_data=None,
                               postprocessors=[WeightByDatapoints()])
    ends: list[float] = []

    class Timer(TrainingProcessCallback):
        def on_train_begin(self, *, model):  # noqa: ANN001, ANN202
            ends.append(time.perf_counter())
            return Metrics()

        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):  # noqa: ANN001, ANN202
            ends.append(time.perf_counter())
            return False, Metrics()

    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(central_num_iterations=a.rounds, evaluation_frequency=a.rounds + 1,
                                           train_cohort_size=a.cohort, val_cohort_size=0),
        backend=backend, model=model,
        model_train_params=NNTrainHyperParams(local_learning_rate=LR, local_num_epochs=1, local_batch_size=BATCH),
        model_eval_params=NNEvalHyperParams(local_batch_size=None), callbacks=[Timer()])
    tested = np.random.default_rng([SEED, 3]).choice(a.population, min(a.population, TEST_CLIENTS), replace=False)
    xt, yt = source.held_out(np.sort(tested), TEST_SAMPLES)
    with torch.no_grad():
        accuracy = (net(xt).argmax(1) == yt).float().mean().item()
    result = {"framework": "pfl", "population": a.population, "cohort": a.cohort, "rounds": a.rounds,
              "round_times": np.diff(ends).tolist(), "accuracy": accuracy, "wall_in_process_s":
              time.perf_counter() - started, "torch_threads": torch.get_num_threads()}
    with open(a.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
