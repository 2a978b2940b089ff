"""The in-process engine: a round's clients trained in this process, no process or model copy per client.

Clients whose method has a batched step go through :mod:`pocketlearn.federated.vectorized` together, in
groups whose size and stacking :mod:`pocketlearn.federated.execution` times at setup; any other method, or a
model that cannot be batched, trains one client after another through the method's own ``step``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pocketlearn.errors import ConfigError
from pocketlearn.federated.clients import ClientData, Cohort
from pocketlearn.federated.execution import Execution, cached, choose, timed
from pocketlearn.federated.population import train_flops_per_sample
from pocketlearn.federated.round import InTheClear, RoundResult, SeedPairs, SimulatedEngine
from pocketlearn.federated.seeding import client_generators
from pocketlearn.federated.updates import ClientUpdate, RoundUpdates
from pocketlearn.federated.vectorized import (
    LocalOptimizer,
    StackedForward,
    largest_first,
    mlp_layers,
    pad_batches,
    stacked_copies,
    stacked_forwards,
    train_stacked,
    train_stacked_mlp,
)
from pocketlearn.memory.allocator import keep_freed_memory
from pocketlearn.methods import available_methods, get_method_class, make_method
from pocketlearn.methods.base import Precision, TrainingMethod, cross_entropy

# Below this many FLOPs a batched step is a few hundred microseconds: a second thread costs more in
# synchronisation than it saves, and when the cores are busy a spinning OpenMP team is many times slower.
SMALL_STEP_FLOPS = 5e7


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op threads (None: leave as is)."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class LocalTraining:
    """How a client trains in a round (shared by all clients of a method)."""

    method: str = "backprop"
    epochs: int = 1
    batch_size: int = 16
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    options: tuple[tuple[str, object], ...] = ()
    proximal_mu: float = 0.0
    shuffle_seed: int = 2
    precision: Precision = "fp32"  # "bf16": mixed precision on the client (gradient methods)

    @property
    def facts(self) -> type[TrainingMethod]:
        """The method's class, whose attributes say how it trains; no method yet ("auto"): the defaults."""
        return get_method_class(self.method) if self.method in available_methods() else TrainingMethod

    @property
    def vectorizable(self) -> bool:
        return self.facts.vectorizes_with(dict(self.options))

    def optimizer(self) -> LocalOptimizer:
        """Each client's optimizer as the vectorized engine runs it (the method's own, batched)."""
        opts = self.method_options()
        return LocalOptimizer(float(opts["lr"]), float(opts.get("momentum", 0.0)), float(opts.get("weight_decay", 0.0)),
                              self.proximal_mu, kind=opts.get("optimizer", "sgd"))

    def method_options(self) -> dict[str, Any]:
        opts = {"lr": self.lr, **dict(self.options)}
        if self.facts.takes_momentum:
            opts.setdefault("momentum", self.momentum)
            opts.setdefault("weight_decay", self.weight_decay)
            if self.precision != "fp32":
                opts.setdefault("precision", self.precision)
        elif self.precision != "fp32":
            raise ConfigError(f"client.precision = {self.precision!r} needs a method that trains by backpropagation; "
                              f"{self.method!r} does not: use precision 'fp32' or another method")
        return opts


def visiting_orders(indices: Sequence[np.ndarray], client_ids: Sequence[int], rnd: int, epochs: int, seed: int
                    ) -> list[np.ndarray]:
    """Each client's samples in visiting order for round ``rnd``: (epochs, n) from ``default_rng([seed, rnd, c])``.

    ``indices[k]`` holds the samples of client ``client_ids[k]``.
    """
    several = [c for idx, c in zip(indices, client_ids, strict=True) if len(idx) > 1]
    generators = client_generators(seed, rnd, several)  # a client of one sample has one order: no generator
    orders = []
    for idx in indices:
        if len(idx) <= 1:
            orders.append(idx[None] if epochs == 1 else idx[None].repeat(epochs, 0))
            continue
        rng = next(generators)
        if epochs == 1:
            orders.append(idx[rng.permutation(len(idx))][None])
        else:
            orders.append(np.stack([idx[rng.permutation(len(idx))] for _ in range(epochs)]))
    return orders


class InProcessEngine(SimulatedEngine):
    """Trains clients on the data of this process; the server gives it global weights and client ids."""

    def __init__(self, template: nn.Module, clients: ClientData, *, vectorize: bool = True,
                 group_size: int | None = None):
        self.template, self.clients = template, clients
        keep_freed_memory()  # steps re-allocate the same large tensors: no page faults for them every step
        x, y = clients.example(1)
        self._token_targets = y.dim() > 1  # a language model's (B, T) targets: no written-out MLP path
        self.forwards: dict[str, StackedForward] = stacked_forwards(template) if vectorize else {}
        self.mlp = mlp_layers(template) if vectorize else None  # plain SGD on an MLP: backward written out
        self.num_params = sum(p.numel() for p in template.parameters())
        # (counted per layer output: a convolution costs per pixel, so a small CNN does 10x its parameter count)
        self.flops_per_sample = train_flops_per_sample(template, x) if self.forwards and len(x) else 0.0
        # at most as many clients as fit ~256 MiB (or the group size asked for); warm_up times smaller groups
        self._largest_group = group_size or self._auto_group_size()
        self.execution = Execution(next(iter(self.forwards), ""), self._largest_group)
        self._timed = group_size is None
        self._stack: dict[str, Tensor] | None = None  # the last group's stacked weights, reused
        self._deltas: dict[str, Tensor] = {}  # the same for the written-out MLP's deltas (made on first use)
        self._ordered: dict[str, Tensor] = {}  # and for a round's deltas in the order asked for (see train)
        self.client_steps = (0, 0)  # (computed, real) client-steps so far: padding would make the first larger
        self.samples_trained = 0  # examples the clients trained on so far (each epoch counted)

    @property
    def forward(self) -> StackedForward | None:
        """The stacked forward vectorized rounds use (None: clients train one at a time)."""
        return self.forwards.get(self.execution.forward)

    @property
    def group_size(self) -> int:
        return self.execution.group_size

    def warm_up(self, num_clients: int, local: LocalTraining) -> None:
        """Time one batch of a round's worth of real clients with learning rate 0, and choose how to run them.

        First-use costs (autograd, kernels, the clients' stacked weights) then land in setup rather than in
        round 1, as the anchors' own warm-up does, and the forward and group size come from those timings
        (:mod:`pocketlearn.federated.execution`). One batch each is enough: a whole round cost as much as
        round 1 itself, 30 s and more for a CCT on 2 cores.
        """
        if self.forward is None or not local.vectorizable:
            return
        params = {n: p.detach().clone() for n, p in self.template.named_parameters()}
        ids = list(range(min(num_clients, len(self.clients))))
        cohort = self.clients.take(ids)
        cohort = replace(cohort, indices=[i[: local.batch_size] for i in cohort.indices])
        orders = visiting_orders(cohort.indices, ids, 0, 1, local.shuffle_seed)  # the clients' seeding warms up too
        quiet = replace(local, lr=0.0, epochs=1)
        counted = self.client_steps, self.samples_trained  # the run's figures leave the warm-up out
        if self._timed:
            largest = min(len(orders), self._largest_group)
            forwards = [next(iter(self.forwards))] if self.written_out(quiet) else list(self.forwards)
            key = (tuple((n, tuple(p.shape)) for n, p in params.items()), tuple(cohort.x.shape[1:]), cohort.x.dtype,
                   local.batch_size, largest, local.optimizer(), quiet.method_options().get("precision"),
                   tuple(forwards), torch.get_num_threads())
            timing = self._time_step(params, cohort, orders, quiet)
            self.execution = cached(key, lambda: choose(forwards, largest, timing))
            self._stack = None
        self._train_vectorized(params, ids, cohort, orders, quiet)
        self.client_steps, self.samples_trained = counted

    def _time_step(self, params: dict[str, Tensor], cohort: Cohort, orders: list[np.ndarray], local: LocalTraining
                   ) -> Callable[[str, int], float]:
        def seconds_per_client_step(forward: str, size: int) -> float:
            self.execution, self._stack = Execution(forward, size), None
            return timed(lambda: self._train_vectorized(params, list(range(size)), cohort, orders[:size], local)
                         ) / size

        return seconds_per_client_step

    def written_out(self, local: LocalTraining) -> bool:
        """Whether the MLP path (backward written out, no forward to choose) trains these clients."""
        opt = local.optimizer()
        return self.mlp is not None and opt.plain and local.method_options().get("precision", "fp32") == "fp32" \
            and not self._token_targets

    def _count_steps(self, computed: int, real: int, samples: int) -> None:
        self.client_steps = (self.client_steps[0] + computed, self.client_steps[1] + real)
        self.samples_trained += samples

    def threads_for(self, clients: int, batch_size: int) -> int | None:
        """One thread for a step too small to share (None: all of them), from the work a step really does."""
        return 1 if self.flops_per_sample * clients * batch_size < SMALL_STEP_FLOPS else None

    def _auto_group_size(self) -> int:
        weights = self.num_params * 4
        return max(1, min(1024, (256 << 20) // (4 * weights)))  # params, grads, temporaries within ~256 MiB

    def train(self, params: dict[str, Tensor], client_ids: Sequence[int], rnd: int, local: LocalTraining
              ) -> RoundResult:
        """Train ``client_ids`` from the global ``params`` (trainable tensors by name) with ``local``.

        The result may hold the engine's reused buffers: it is valid until the next call (clone what you keep).
        """
        cohort = self.clients.take(client_ids)
        orders = visiting_orders(cohort.indices, client_ids, rnd, local.epochs, local.shuffle_seed)
        if self.forward is not None and local.vectorizable:
            return self._train_vectorized(params, client_ids, cohort, orders, local)
        return self._train_sequential(params, client_ids, cohort, orders, local, rnd)

    def _train_vectorized(self, params: dict[str, Tensor], client_ids: Sequence[int], cohort: Cohort,
                          orders: list[np.ndarray], local: LocalTraining) -> RoundResult:
        """Clients largest first, in groups of similar size; each group's stack shrinks as its clients finish."""
        assert self.forward is not None
        opt, precision = local.optimizer(), local.method_options().get("precision", "fp32")
        written_out = self.written_out(local)
        sizes = np.array([o.shape[1] for o in orders])
        rank = largest_first(sizes)
        deltas: dict[str, list[Tensor]] = {n: [] for n in params}
        losses = []
        for start in range(0, len(client_ids), self.group_size):
            members = rank[start:start + self.group_size]
            data = pad_batches(cohort.x, cohort.y, [orders[i] for i in members], local.batch_size)
            self._count_steps(sum(data.running), int(data.steps.sum()), local.epochs * int(sizes[members].sum()))
            k = len(members)
            if self._stack is None or len(next(iter(self._stack.values()))) < k:
                self._stack, self._deltas = stacked_copies(params, k), {}
            stack = {n: t[:k] for n, t in self._stack.items()}  # a smaller last group: the first k rows
            single = len(client_ids) <= self.group_size  # else the next chunk reuses the stack: copy
            with torch_threads(self.threads_for(k, data.w.shape[2])):
                if written_out and self.mlp is not None:
                    if not self._deltas:
                        self._deltas = {n: torch.zeros_like(t.detach()) for n, t in self._stack.items()}
                    delta, loss = train_stacked_mlp(self.mlp, params, data, opt.lr, stack,
                                                    {n: t[:k] for n, t in self._deltas.items()})
                    delta = delta if single else {n: t.clone() for n, t in delta.items()}
                else:
                    trained, loss = train_stacked(self.forward, params, data, opt, stack, precision)
                    origin = {n: p.detach() for n, p in params.items()}  # the deltas need no graph
                    delta = {n: t.sub_(origin[n]) if single else t - origin[n] for n, t in trained.items()}
            for n, t in delta.items():
                deltas[n].append(t)
            losses.append(loss)
        counts = torch.from_numpy(sizes.astype(np.float32))
        stacked = {n: d[0] if len(d) == 1 else torch.cat(d) for n, d in deltas.items()}
        loss = torch.cat(losses)
        if bool((rank != np.arange(len(rank))).any()):  # back in the order asked for
            back = torch.from_numpy(np.argsort(rank))
            stacked, loss = {n: torch.index_select(t, 0, back, out=self._in_order(n, t)) for n, t in stacked.items()
                             }, loss[back]
        return RoundResult(RoundUpdates([int(c) for c in client_ids], counts, stacked), loss)

    def _in_order(self, name: str, t: Tensor) -> Tensor:
        """A reused buffer for ``t``'s rows put back in order (a fresh one per round costs its page faults)."""
        buffer = self._ordered.get(name)
        if buffer is None or len(buffer) < len(t) or buffer.shape[1:] != t.shape[1:]:
            buffer = self._ordered[name] = torch.empty_like(t)
        return buffer[: len(t)]

    def _train_sequential(self, params: dict[str, Tensor], client_ids: Sequence[int], cohort: Cohort,
                          orders: list[np.ndarray], local: LocalTraining, rnd: int) -> RoundResult:
        updates, losses, histories = [], [], []
        for c, order in zip(client_ids, orders, strict=True):
            seed = int(np.random.SeedSequence([local.shuffle_seed, rnd, int(c)]).generate_state(1)[0] >> 1)
            torch.manual_seed(seed)  # dropout layers
            delta, loss, history = self._train_one(params, cohort, order, local, seed)
            updates.append(ClientUpdate(int(c), order.shape[1], delta))
            losses.append(loss)
            histories.append(history)
        seeds = local.facts.sends_seeds  # its (seed, g) pairs are its wire form (seed exchange, mixed runs' ZO)
        wire = SeedPairs(histories) if seeds else InTheClear()
        return RoundResult(RoundUpdates.stack(updates), torch.tensor(losses), wire)

    def _train_one(self, params: dict[str, Tensor], cohort: Cohort, order: np.ndarray, local: LocalTraining,
                   seed: int) -> tuple[dict[str, Tensor], float, list[tuple[int, float]]]:
        model = copy.deepcopy(self.template)
        options = local.method_options()
        if local.facts.sends_seeds:
            options.setdefault("seed", seed)  # each client and round draws its own seeds (perturbation directions)
        method = make_method(local.method, model, loss_fn=_proximal_loss(local.proximal_mu), **options)
        trainable = method.trainable_parameters()
        # running statistics travel when the server averages them (a mixed run's server holds parameters only)
        trained = trainable | {n: t for n, t in method.running_statistics().items() if n in params}
        with torch.no_grad():
            for n, p in [*method.model.named_parameters(), *method.model.named_buffers()]:
                source = params.get(n, params.get(base_name(n)))  # adapters wrap a layer's weights in base_layer
                if source is not None:
                    p.copy_(source)
            start = {n: p.detach().clone() for n, p in trained.items()}
        if hasattr(method.loss_fn, "bind"):
            method.loss_fn.bind(trainable, start)
        data = pad_batches(cohort.x, cohort.y, [order], local.batch_size)
        self._count_steps(int(data.steps[0]), int(data.steps[0]), order.size)
        total = 0.0
        for s in range(int(data.steps[0])):
            real = data.w[0, s] > 0
            x, y = data.batch(s, 1)
            loss = method.step((x[0][real], y[0][real]))
            total += getattr(method.loss_fn, "task_loss", loss)
        delta = {base_name(n): p.detach() - start[n] for n, p in trained.items()}
        return delta, total / max(int(data.steps[0]), 1), list(getattr(method, "history", []))


def base_name(name: str) -> str:
    """A parameter's name in the plain model: PEFT moves an adapted layer's own weights under ``base_layer``."""
    return name.replace(".base_layer.", ".")


class _ProximalLoss:
    """Cross-entropy plus FedProx's (mu/2)·||w - w_global||² over the trained parameters."""

    def __init__(self, mu: float):
        self.mu = mu
        self.trained: dict[str, Tensor] = {}
        self.start: dict[str, Tensor] = {}  # the trained tensors' values at the start of the round
        self.task_loss = 0.0  # the last cross-entropy alone: training losses are reported without the pull

    def bind(self, trained: dict[str, Tensor], start: dict[str, Tensor]) -> None:
        self.trained, self.start = trained, start

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        loss = cross_entropy(logits, targets)
        self.task_loss = loss.item()
        prox = sum(((p - self.start[n]) ** 2).sum() for n, p in self.trained.items())
        return loss + 0.5 * self.mu * prox


def _proximal_loss(mu: float) -> Callable[[Tensor, Tensor], Tensor]:
    return _ProximalLoss(mu) if mu > 0 else cross_entropy
