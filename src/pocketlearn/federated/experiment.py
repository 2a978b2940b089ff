"""From a :class:`RunConfig` to a ready :class:`FederatedServer`: data, partition, model, devices, strategy."""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from pocketlearn.devices import DeviceProfile
from pocketlearn.errors import ConfigError
from pocketlearn.federated.attacks import Attack
from pocketlearn.federated.checks import check_run, is_mixed
from pocketlearn.federated.clients import ClientData, InMemoryClients, ResampledClients, SyntheticClients
from pocketlearn.federated.codecs import make_codec
from pocketlearn.federated.config import RunConfig
from pocketlearn.federated.population import (
    DeviceFit,
    assign_devices,
    fit_method,
    plan_method,
    step_cost_ratios,
    train_flops_per_sample,
)
from pocketlearn.federated.round import SimulatedEngine
from pocketlearn.federated.sampling import ClientSampler
from pocketlearn.federated.server import Clients, Engine, FederatedServer, RoundPolicy, fingerprint
from pocketlearn.federated.simulate import InProcessEngine, LocalTraining
from pocketlearn.federated.traces import make_trace, speed_factors

if TYPE_CHECKING:
    from pocketlearn.federated.mixed import MixedMethods

# Synthetic(alpha, beta)'s test set: this many fresh samples from each of this many of the population's clients.
SYNTHETIC_TEST_CLIENTS, SYNTHETIC_TEST_SAMPLES = 200, 20


@dataclass
class FederatedData:
    """Every client's training samples, and the held-out test set."""

    clients: ClientData
    x_test: Tensor
    y_test: Tensor
    client_names: list[str] | None = None

    def in_memory(self, need: str) -> InMemoryClients:
        """The clients as a loaded split; a lazy population cannot do ``need`` (a clear error names it)."""
        if not isinstance(self.clients, InMemoryClients):
            raise ConfigError(f"{need} needs every client's samples listed up front; this run's clients "
                              f"({type(self.clients).__name__}) are made on demand: use a partition of a loaded "
                              "data set (iid, dirichlet, quantity, lognormal, natural)")
        return self.clients


def load_federated_data(config: RunConfig) -> FederatedData:
    from pocketlearn.data.partition import make_partition

    d = config.data
    if d.name == "synthetic":
        return _synthetic_data(config)
    if d.partition == "natural":
        return _natural_data(config)
    from pocketlearn.data import load_tensors
    from pocketlearn.models import get_model_spec

    x, y, xt, yt = load_tensors(d.name, limit=d.limit, unit_pixels=get_model_spec(config.model.name).unit_pixels)
    if d.test_limit:
        xt, yt = xt[: d.test_limit], yt[: d.test_limit]
    if d.partition == "resample":
        return FederatedData(ResampledClients(x, y, d.num_clients, d.alpha, d.mean_size, d.sigma, d.seed), xt, yt)
    labels = y.numpy() if y.dim() == 1 else np.zeros(len(y), dtype=np.int64)
    part = make_partition(d.partition, labels, d.num_clients, alpha=d.alpha, seed=d.seed, sigma=d.sigma)
    return FederatedData(InMemoryClients(x, y, list(part.indices)), xt, yt, part.names)


def _synthetic_data(config: RunConfig) -> FederatedData:
    """LEAF's Synthetic(alpha, beta) with ``data.num_clients`` clients; the test set: fresh samples of some of them."""
    from pocketlearn.data.synthetic import Synthetic

    d = config.data
    if d.partition != "natural":
        raise ConfigError(f"data.name = 'synthetic' has its own clients (each its own model and inputs): set "
                          f"data.partition = 'natural', not {d.partition!r}")
    source = Synthetic(d.alpha, d.beta, d.seed)
    tested = np.random.default_rng([d.seed, 3]).choice(d.num_clients, min(d.num_clients, SYNTHETIC_TEST_CLIENTS),
                                                       replace=False)
    xt, yt = source.held_out(np.sort(tested), SYNTHETIC_TEST_SAMPLES)
    if d.test_limit:
        xt, yt = xt[: d.test_limit], yt[: d.test_limit]
    return FederatedData(SyntheticClients(source, d.num_clients, d.mean_size, d.sigma), xt, yt)


def _natural_data(config: RunConfig) -> FederatedData:
    d = config.data
    if d.name == "shakespeare":
        from pocketlearn.data.shakespeare import federated_char_lm

        fed = federated_char_lm(num_roles=d.num_clients, seq_len=64)
        return FederatedData(InMemoryClients(fed.x, fed.y, list(fed.partition.indices)), fed.x_test, fed.y_test,
                             fed.partition.names)
    if d.name == "shakespeare-words":
        from pocketlearn.data.words import shakespeare_word_users

        users = shakespeare_word_users(d.num_clients, seed=d.seed)
        return FederatedData(InMemoryClients(users.x, users.y, [i.numpy() for i in users.indices]), users.x_test,
                             users.y_test, users.names)
    if d.name == "hapt":
        from pocketlearn.data.hapt import federated_hapt

        hapt = federated_hapt()
        return FederatedData(InMemoryClients(hapt.x, hapt.y, list(hapt.partition.indices)), hapt.x_test,
                             hapt.y_test, hapt.partition.names)
    raise ConfigError("data.partition = 'natural' needs a data set with users (shakespeare, shakespeare-words, "
                      f"hapt, synthetic), not {d.name!r}")


def local_training(config: RunConfig, proximal_mu: float) -> LocalTraining:
    c = config.client
    return LocalTraining(method=c.method, epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, momentum=c.momentum,
                         weight_decay=c.weight_decay, options=tuple(sorted(c.options.items())),
                         proximal_mu=proximal_mu, shuffle_seed=c.shuffle_seed, precision=c.precision)


def prepare_global_model(config: RunConfig, template: nn.Module) -> tuple[nn.Module, dict[str, Tensor]]:
    """The server's model, prepared by the configured method; its trained state is what rounds change.

    A mixed run's global model is the plain model: every method's update lands on its parameters.
    """
    from pocketlearn.methods import make_method

    if is_mixed(config):
        model = copy.deepcopy(template)
        return model, dict(model.named_parameters())
    method = make_method(config.client.method, copy.deepcopy(template),
                         **local_training(config, 0.0).method_options())
    return method.model, method.trained_state()


def fit_devices(config: RunConfig, devices: list[DeviceProfile], template: nn.Module,
                example: tuple[Tensor, Tensor]) -> list[DeviceFit]:
    def build() -> nn.Module:
        return copy.deepcopy(template)

    if not is_mixed(config):
        opts = local_training(config, 0.0).method_options()
        return [fit_method(build, config.client.method, opts, dev, example, allow_plan=config.client.fit == "plan")
                for dev in devices]
    from pocketlearn.federated.mixed import kind_of, mixed_methods

    c = config.client
    for method in c.methods.values():
        kind_of(method)  # a method that cannot mix is a clear error
    candidates = mixed_methods()
    options = {m: mixed_method_options(config, m) for m in candidates}
    fits = []
    for dev in devices:
        method = c.methods.get(dev.name, c.method)
        if method == "auto":
            fits.append(plan_method(build, dev, example, candidates, options))
        else:
            fits.append(fit_method(build, method, options[method], dev, example, allow_plan=c.fit == "plan",
                                   candidates=candidates, candidate_options=options))
    return fits


def step_costs(config: RunConfig, template: nn.Module, fits: list[DeviceFit], batch: tuple[Tensor, Tensor]
               ) -> dict[str, float]:
    """The run's methods' step times relative to backprop's, measured (none when every client backpropagates)."""
    methods = {f.method for f in fits if f.method is not None} - {"backprop"}
    if not methods:
        return {}
    own = local_training(config, 0.0).method_options()
    options = {m: own if m == config.client.method else mixed_method_options(config, m) for m in sorted(methods)}
    return step_cost_ratios(lambda: copy.deepcopy(template), options, (batch[0].clone(), batch[1].clone()))


def mixed_method_options(config: RunConfig, method: str) -> dict[str, object]:
    """A mixed run's options for ``method``: the client's learning-rate settings, then ``client.per_method``."""
    base = replace(local_training(config, 0.0), method=method, options=())
    return {**base.method_options(), **config.client.per_method.get(method, {})}


def mixed_setup(config: RunConfig, template: nn.Module, fits: list[DeviceFit], device_index: np.ndarray
                ) -> MixedMethods | None:
    """What the server needs for a mixed run (None for a single-method run)."""
    if not is_mixed(config):
        return None
    from pocketlearn.federated.mixed import MixedMethods

    clients_of = np.bincount(device_index, minlength=len(fits))  # clients per device class
    counts: dict[str, int] = {}
    for fit, n in zip(fits, clients_of, strict=True):
        if fit.method is not None and n:
            counts[fit.method] = counts.get(fit.method, 0) + int(n)
    if not counts:
        raise ConfigError("no device of this run can train with any method; see `pocketlearn plan` for budgets")
    shares = {m: n / sum(counts.values()) for m, n in counts.items()}
    return MixedMethods(template, {m: mixed_method_options(config, m) for m in shares},
                        config.client.shuffle_seed, shares)


def build_template(config: RunConfig) -> nn.Module:
    """The model every client starts from (seeded, so a device builds the same frozen weights as the server)."""
    from pocketlearn.models import build_model

    torch.manual_seed(config.seed)
    template = build_model(config.model.name, image_size=config.model.image_size)
    if config.model.init:
        from pocketlearn.checkpoint import load_weights

        load_weights(template, config.model.init)
    return template


def build_server(config: RunConfig, run_dir: Path | None, *, fresh: bool = False,
                 data: FederatedData | None = None, engine: Engine | None = None
                 ) -> tuple[FederatedServer, FederatedData]:
    """Everything a run needs; resumes from ``run_dir`` when it holds a checkpoint of the same config.

    ``data``: clients' samples an application built itself (``config.data`` is then not loaded).
    ``engine``: trains the sampled clients somewhere else (real devices) instead of ``config.engine``.
    """
    from pocketlearn.evaluate import batches_of, evaluate
    from pocketlearn.federated.strategies import make_strategy

    check_run(config)
    data = data or load_federated_data(config)
    template = build_template(config)
    initial = copy.deepcopy(template)
    model, params = prepare_global_model(config, initial)

    sampler, fits, device_index = make_sampler(config, data, template)
    strategy = make_strategy(config.strategy.name, **_strategy_options(config, sampler))
    if strategy.mechanism is not None:
        strategy.mechanism.check_run(config.rounds)  # a run that would exceed its target epsilon never starts
    local = local_training(config, strategy.proximal_mu)
    clients = Clients(data.clients.sizes, device_index, fits, train_flops_per_sample(template,
                                                                                     data.clients.example(1)[0]),
                      speed_factors(len(data.clients), config.devices.spread, config.devices.seed),
                      step_costs(config, template, fits, data.clients.example(config.client.batch_size)))
    engine = engine or make_engine(config, template, data)
    if isinstance(engine, InProcessEngine):
        engine.warm_up(config.clients_per_round, local)
    test_batches = batches_of(data.x_test, data.y_test, config.eval.batch_size)
    seeds = config.codec.up == "seeds"
    policy = RoundPolicy(deadline_s=config.devices.deadline_s, dropout=config.devices.dropout,
                         overselect=config.devices.overselect,
                         seed=config.devices.seed, eval_every=config.eval.every,
                         uplink=make_codec(None if seeds else config.codec.up), downlink=make_codec(config.codec.down),
                         error_feedback=config.codec.error_feedback, codec_seed=config.codec.seed,
                         attack=_attack(config, len(data.clients)), seed_exchange=seeds,
                         secagg=config.secagg if config.secagg.enabled else None,
                         mixed=mixed_setup(config, template, fits, device_index),
                         max_failed_rounds=config.max_failed_rounds)
    if run_dir is not None and fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    args = (model, params, engine, strategy, sampler, clients, local, policy, lambda m: evaluate(m, test_batches),
            run_dir, fingerprint(config.model_dump()))
    if config.asynchronous.buffer:
        from pocketlearn.federated.asynchronous import BufferedServer, BufferSettings

        a = config.asynchronous
        settings = BufferSettings(a.buffer, a.concurrency or config.clients_per_round, a.staleness)
        return BufferedServer(*args, checkpoint=config.checkpoint, settings=settings), data
    return FederatedServer(*args, checkpoint=config.checkpoint), data


def make_sampler(config: RunConfig, data: FederatedData, template: nn.Module
                 ) -> tuple[ClientSampler, list[DeviceFit], np.ndarray]:
    """The run's client sampler (only clients whose device can train), with the devices' fits and classes."""
    num_clients = len(data.clients)
    _check_round_size(config, num_clients)
    example = tuple(t.clone() for t in data.clients.example(config.client.batch_size))  # own storage
    devices, device_index = assign_devices(num_clients, config.devices.mix, config.devices.seed,
                                           config.devices.profiles)
    fits = fit_devices(config, devices, template, (example[0], example[1]))
    allowed = np.array([f.method is not None for f in fits])[device_index]  # per device class, then per client
    availability = np.array([f.device.availability for f in fits])[device_index] if config.devices.availability \
        else None
    trace = make_trace(config.devices.trace, num_clients, config.devices.seed, config.devices.trace_period_s) \
        if config.devices.trace else None
    sampler = ClientSampler(num_clients, config.clients_per_round, seed=config.sampling_seed,
                            availability=availability, availability_seed=config.devices.seed, allowed=allowed,
                            trace=trace)
    return sampler, fits, device_index


def _check_round_size(config: RunConfig, num_clients: int) -> None:
    """A round samples distinct clients: it cannot ask for more than the run has (counted on the loaded data)."""
    if config.clients_per_round <= num_clients:
        return
    d = config.data
    source = (f"data {d.name!r} has {num_clients} users (its natural partition)" if d.partition == "natural"
              else f"the run has {num_clients} clients (data.num_clients = {d.num_clients})")
    raise ConfigError(f"clients_per_round = {config.clients_per_round}, but {source}; set clients_per_round to at "
                      f"most {num_clients}" + ("" if d.partition == "natural" else ", or raise data.num_clients"))


def dp_population(config: RunConfig, data: FederatedData | None = None) -> int:
    """How many clients a private run of ``config`` is charged as sampling from (calibrate noise with it)."""
    data = data or load_federated_data(config)
    sampler, _, _ = make_sampler(config, data, build_template(config))
    return sampler.population(config.rounds)


def _strategy_options(config: RunConfig, sampler: ClientSampler) -> dict:
    options = dict(config.strategy.options)
    if config.strategy.name == "dp-fedavg":  # the accountant's sampling comes from the run's own sampler
        options.setdefault("expected_clients", config.clients_per_round)
        population = sampler.population(config.rounds)  # the clients that can be drawn (devices that train)
        options["num_clients"] = min(int(options.get("num_clients", population)), population)
    return options


def _attack(config: RunConfig, num_clients: int) -> Attack | None:
    a = config.attack
    return Attack.on_fraction(num_clients, a.fraction, a.kind, a.scale, a.seed) if a.fraction else None


def make_engine(config: RunConfig, template: nn.Module, data: FederatedData) -> SimulatedEngine:
    if config.engine == "ray":
        from pocketlearn.federated.ray_engine import RayEngine

        return RayEngine(template, data.clients, vectorize=config.vectorize)
    return InProcessEngine(template, data.clients, vectorize=config.vectorize)
