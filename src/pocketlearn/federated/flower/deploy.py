"""The ServerApp's work: the simulator's server loop with real devices as its engine.

``fed serve`` writes the run's config and settings into the Flower app's run config; Flower starts the
ServerApp in a process of its own, which builds the very :class:`FederatedServer` that ``fed simulate`` builds
(strategy, codecs, DP, checkpoint, metrics) around a :class:`FlowerEngine`, resumes from the run folder's
checkpoint if there is one, and runs the remaining rounds.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pocketlearn.errors import ConfigError, TrainingError, raise_problems
from pocketlearn.federated.config import RunConfig, parse_config

# Keys of the Flower app's run config ([tool.flwr.app.config]), written by ``fed serve``.
CONFIG, RUN_DIR, ROUND_TIMEOUT, MIN_DEVICES, JOIN_TIMEOUT = "config", "run-dir", "round-timeout", "min-devices", \
    "join-timeout"


@dataclass(frozen=True)
class ServeSettings:
    """What the ServerApp needs besides the run config: where to write, how long to wait for devices."""

    config: RunConfig
    run_dir: Path
    round_timeout_s: float = 600.0  # a round waits this long for replies; later ones are left out
    min_devices: int = 0  # wait for this many devices before round 1 (0: one per client of the config)
    join_timeout_s: float = 600.0

    def run_config(self) -> dict[str, str | float | int]:
        return {CONFIG: self.config.model_dump_json(), RUN_DIR: str(self.run_dir),
                ROUND_TIMEOUT: float(self.round_timeout_s), MIN_DEVICES: int(self.min_devices),
                JOIN_TIMEOUT: float(self.join_timeout_s)}

    @classmethod
    def from_run_config(cls, run_config: Any) -> ServeSettings:
        if not run_config.get(CONFIG):
            raise ConfigError("this Flower app carries no pocketlearn run config; start it with "
                              "`pocketlearn fed serve CONFIG`")
        return cls(run_config_of(run_config), Path(str(run_config[RUN_DIR])), float(run_config[ROUND_TIMEOUT]),
                   int(run_config[MIN_DEVICES]), float(run_config[JOIN_TIMEOUT]))


def run_config_of(run_config: Any) -> RunConfig:
    """The pocketlearn config inside a Flower run config (both apps read it: the devices build the model)."""
    return parse_config(json.loads(str(run_config[CONFIG])), source="the Flower run config")


def deployment_problems(config: RunConfig) -> list[str]:
    """Everything in ``config`` that only a simulation can do, each with the way out (empty: deployable)."""
    problems = []
    if config.attack.fraction:
        problems.append("attack.fraction: malicious clients are a simulation of poisoned updates; set it to 0")
    if config.devices.dropout:
        problems.append("devices.dropout: real devices drop out by themselves (a round waits --round-timeout "
                        "seconds for them); set it to 0")
    dp = config.strategy.options.get("dp", {})
    if config.codec.up == "seeds" and config.strategy.name == "dp-fedavg" and isinstance(dp, dict) and \
            dp.get("mode") == "local":
        problems.append("codec.up = 'seeds' with dp mode 'local': a device cannot noise MeZO's (seed, g) pairs, "
                        "only an update; use codec.up = 'float32' (or another codec) with local DP")
    return problems


def check_deployable(config: RunConfig) -> None:
    raise_problems("this config cannot run on real devices", deployment_problems(config), lines=True)


def run_rounds(grid: Any, run_config: Any, say: Any = print) -> dict[str, Any]:
    """The ServerApp's main: build the server around the devices, resume, wait for devices, run, summarize."""
    from pocketlearn.federated.experiment import build_server
    from pocketlearn.federated.flower.engine import FlowerEngine
    from pocketlearn.federated.report import summarize
    from pocketlearn.tracking import ScalarLog, round_values

    t0 = time.perf_counter()
    settings = ServeSettings.from_run_config(run_config)
    cfg = settings.config
    check_deployable(cfg)
    track = ScalarLog(cfg.tracking.tensorboard) if cfg.tracking.tensorboard else None
    engine = FlowerEngine(grid, round_timeout_s=settings.round_timeout_s, say=say)
    server, data = build_server(cfg, settings.run_dir, engine=engine)
    if cfg.devices.deadline_s is not None:
        say(f"devices.deadline_s = {cfg.devices.deadline_s:g} simulated seconds does not apply to real devices; "
            f"a round waits up to {settings.round_timeout_s:g} s (--round-timeout)")
    server.policy = replace(server.policy, deadline_s=None)  # real time decides who is late: the engine's timeout
    engine.num_clients = len(data.clients)
    resumed = server.resume()
    if resumed:
        say(f"resuming {settings.run_dir} after round {server.round}")
    elif server.discarded_rounds:
        say(f"{settings.run_dir} had metrics of {server.discarded_rounds} round(s) but no checkpoint: starting over")
    wanted = settings.min_devices or len(data.clients)
    if server.round < cfg.rounds and engine.wait_for_devices(wanted, settings.join_timeout_s,
                                                             resumed=server.round > 0) == 0:
        raise ConfigError(f"no device joined within {settings.join_timeout_s:g} s; start devices with "
                          "`pocketlearn fed join --server HOST:PORT --data FILE --device PRESET`")
    setup_s = time.perf_counter() - t0

    def on_round(r: Any) -> None:
        if r.failed:
            say(f"round {r.round}/{cfg.rounds} FAILED and applied no update: {r.failed}")
        acc = r.eval.get("accuracy")
        say(f"round {r.round}/{cfg.rounds}: {r.finished}/{r.sampled} clients finished"
            + (f", accuracy {acc:.4f}" if acc is not None else "") + f" ({r.round_time_s:.1f} s)")
        if track:
            track.write(r.round, round_values(r))

    try:
        records = server.run(cfg.rounds, on_round)
    except TrainingError as err:  # the summary says why, for `fed serve` to exit with it
        (settings.run_dir / "summary.json").write_text(json.dumps({"name": cfg.name, "rounds": server.round,
                                                                   "failed": str(err)}, indent=1))
        raise
    finally:
        if track:
            track.close()
    summary = summarize(cfg, server, records, setup_s=setup_s, resumed=resumed)
    summary.update(engine="flower", devices=len(engine.node_of), traffic=engine.traffic.to_json())
    (settings.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
