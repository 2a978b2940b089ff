"""Every rule between a run config's keys, checked once when the config is loaded, before anything starts.

One value out of range is pydantic's to report (:mod:`pocketlearn.federated.config`); what is checked here is a
combination that no single key shows to be wrong: a cohort larger than the population, secure aggregation with a
robust strategy, a codec a method cannot send. Every engine (in process, Ray, Flower) and ``pocketlearn config
check`` read the same list, so a deployment refuses what a simulation refuses, with the same words.
"""

from __future__ import annotations

from collections.abc import Callable

from pocketlearn.errors import ConfigError
from pocketlearn.federated.config import RunConfig

ROBUST = ("median", "trimmed-mean", "norm-bounding", "krum", "multi-krum")  # need each client's own update


def run_problems(config: RunConfig) -> list[str]:
    """Every cross-key problem of ``config``, each naming the keys to change (empty: it can run)."""
    return [p for rule in RULES for p in rule(config)]


def check_run(config: RunConfig, source: str = "config") -> None:
    """Raise one ConfigError listing every problem :func:`run_problems` finds in ``config`` (from ``source``)."""
    problems = run_problems(config)
    if problems:
        raise ConfigError(f"{source} cannot run ({len(problems)} problem{'s' * (len(problems) > 1)}):\n  - "
                          + "\n  - ".join(problems))


def is_mixed(config: RunConfig) -> bool:
    """Devices may train with different methods: ``client.method = "auto"`` or methods pinned per device."""
    return config.client.method == "auto" or bool(config.client.methods)


def _round_size(config: RunConfig) -> list[str]:
    """A round samples distinct clients, so no more than the population (natural partitions: checked on load)."""
    d = config.data
    if (d.partition == "natural" and d.name != "synthetic") or config.clients_per_round <= d.num_clients:
        return []
    return [f"clients_per_round = {config.clients_per_round} is more than the {d.num_clients} clients of the run "
            f"(data.num_clients); set clients_per_round to at most {d.num_clients}, or raise data.num_clients"]


def _secure_aggregation(config: RunConfig) -> list[str]:
    s = config.secagg
    if not s.enabled:
        return []
    out = []
    if config.strategy.name in ROBUST:
        out.append(f"secagg with strategy {config.strategy.name!r}: the strategy needs each client's update, but "
                   "secure aggregation shows the server only their sum; use fedavg, fedprox or a FedOpt strategy, "
                   "or set secagg.enabled = false")
    if config.clients_per_round < 2:
        out.append("secagg with clients_per_round = 1: a sum of one update is that update; sample at least 2 "
                   "clients per round")
    elif config.clients_per_round * (1 - config.devices.dropout) < 2:
        out.append(f"secagg with devices.dropout = {config.devices.dropout}: of {config.clients_per_round} clients "
                   "per round fewer than 2 are expected to finish, and a round needs 2 to aggregate securely; "
                   "lower devices.dropout or raise clients_per_round")
    if s.neighbours is not None and s.neighbours % 2 and s.neighbours < config.clients_per_round - 1:
        out.append(f"secagg.neighbours = {s.neighbours}: SecAgg+'s graph links each client to as many neighbours on "
                   f"either side of a ring, so it must be even; use {s.neighbours + 1}")
    if config.strategy.name == "dp-fedavg":  # distributed DP: the clients add the noise before masking
        out += _distributed_dp(config)
    return out


def _distributed_dp(config: RunConfig) -> list[str]:
    from pocketlearn.federated.privacy.config import DPConfig
    from pocketlearn.federated.privacy.distributed import config_problems

    dp = config.strategy.options.get("dp", {})
    try:
        out = config_problems(dp if isinstance(dp, DPConfig) else DPConfig.from_dict(dict(dp)))
    except ConfigError as err:
        out = [f"strategy.options.dp: {err}"]
    if is_mixed(config):
        out.append("dp-fedavg with secagg in a mixed-method run: distributed DP is implemented for single-method "
                   "runs; pin one client.method, or set secagg.enabled = false (central DP)")
    return out


def _codecs(config: RunConfig) -> list[str]:
    if config.codec.up != "seeds":
        return []
    from pocketlearn.methods import methods_where

    senders = methods_where(lambda m: m.sends_seeds)
    if config.client.method in senders:
        return []
    return [f"codec.up = 'seeds' (seed exchange) needs client.method = {' or '.join(map(repr, senders))}, not "
            f"{config.client.method!r}; in a mixed run ZO clients always send one coefficient per pooled seed"]


def _mixed_methods(config: RunConfig) -> list[str]:
    if not is_mixed(config):
        return []
    c, out = config.client, []
    unknown = set(c.methods) - set(config.devices.mix)
    if unknown:
        out.append(f"client.methods pins devices {sorted(unknown)} that devices.mix does not have; use names from "
                   f"{sorted(config.devices.mix)}")
    if c.options:
        out.append("client.options: a mixed run gives options per method; move them to client.per_method.<method>")
    if config.eval.personalize_clients:
        out.append("eval.personalize_clients: personalisation after a mixed-method run is not supported yet; set it "
                   "to 0, or pin one method for every device")
    return out


def _strategy(config: RunConfig) -> list[str]:
    """Its name and options, and a round large enough for it (a robust strategy's tolerance)."""
    from pocketlearn.federated.strategies import make_strategy

    options = dict(config.strategy.options)
    if config.strategy.name == "dp-fedavg":  # the run's own sampling; the population is counted when data loads
        options.setdefault("expected_clients", config.clients_per_round)
        options.setdefault("num_clients", max(config.data.num_clients, config.clients_per_round))
    try:
        make_strategy(config.strategy.name, **options).check_round_size(config.clients_per_round,
                                                                         "clients_per_round")
    except ConfigError as err:
        return [f"strategy: {err}"]
    return []


def _asynchronous(config: RunConfig) -> list[str]:
    if not config.asynchronous.buffer:
        return []
    from pocketlearn.federated.asynchronous import buffer_problems

    return [f"asynchronous.buffer (FedBuff): {p}" for p in buffer_problems(config)]


RULES: tuple[Callable[[RunConfig], list[str]], ...] = (_round_size, _strategy, _secure_aggregation, _codecs,
                                                       _mixed_methods, _asynchronous)
