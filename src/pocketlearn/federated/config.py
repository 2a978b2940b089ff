"""One TOML file describes a federated run; every key is checked, and a wrong one is named in the error."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from pocketlearn.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Section):
    name: str = "digits-mlp"  # a name from pocketlearn.models, or "package.module:function" (your own nn.Module)
    init: str | None = None  # start from these weights: a checkpoint with a "model" state dict (e.g. pretrained)
    image_size: int | None = None  # a pretrained vision model resizes its input images to this square first


class DataSection(_Section):
    name: str = "digits"  # a name from pocketlearn.data, or "synthetic" (LEAF's Synthetic(alpha, beta))
    # "resample": each client's samples drawn with replacement when it is sampled (any number of clients)
    partition: Literal["iid", "dirichlet", "quantity", "lognormal", "natural", "resample"] = "dirichlet"
    num_clients: int = Field(100, ge=1)
    alpha: float = Field(0.5, gt=0)  # Dirichlet concentration (label or quantity skew); synthetic: model spread
    beta: float = Field(0.5, ge=0)  # synthetic: how far the clients' inputs are apart
    sigma: float = Field(1.5, gt=0)  # lognormal, resample, synthetic: the spread of log client sizes
    mean_size: float = Field(32.0, ge=1)  # resample, synthetic: mean samples per client
    seed: int = 0
    limit: int | None = Field(None, ge=1)  # use only the first N training samples (quick runs)
    test_limit: int | None = Field(None, ge=1)


class ClientSection(_Section):
    # a name from pocketlearn.methods, or "auto": each device class trains with the best method the planner fits
    # in its memory (a mixed-method run: federated/mixed.py)
    method: str = "backprop"
    methods: dict[str, str] = {}  # pin a method per device class (device name -> method): also a mixed run
    per_method: dict[str, dict[str, Any]] = {}  # mixed runs: each method's options (lr included)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    precision: Literal["fp32", "bf16"] = "fp32"  # "bf16": clients train in bfloat16 autocast (fp32 weights)
    options: dict[str, Any] = {}  # extra options of the method
    shuffle_seed: int = 2  # order of a client's samples in round r: default_rng([shuffle_seed, r, client])
    fit: Literal["plan", "report"] = "plan"  # a device the method does not fit: pick a method that fits, or
    # leave its clients out and report them


class StrategySection(_Section):
    name: str = "fedavg"
    options: dict[str, Any] = {}


class DevicesSection(_Section):
    mix: dict[str, float] = {"laptop-16g": 1.0}  # device preset (or profile from `profiles`) -> share of clients
    profiles: str | None = None  # a TOML file of extra device profiles
    deadline_s: float | None = Field(None, gt=0)  # simulated seconds a round waits for clients
    dropout: float = Field(0.0, ge=0, lt=1)  # chance that a client drops out of a round it was sampled for
    availability: bool = True  # sample only clients available this round (device availability)
    # availability over simulated time instead: "diurnal" (nightly charging windows across time zones) or a CSV
    # of client,start_s,end_s windows repeating every trace_period_s (federated/traces.py)
    trace: str | None = None
    trace_period_s: float = Field(86_400.0, gt=0)
    spread: float = Field(0.0, ge=0)  # each device's speed: its class's times LogNormal (mean 1, this log-spread)
    overselect: float = Field(0.0, ge=0)  # sample (1 + overselect) x clients_per_round, close at clients_per_round
    seed: int = 3

    @field_validator("mix")
    @classmethod
    def _positive_shares(cls, mix: dict[str, float]) -> dict[str, float]:
        if not mix or any(v <= 0 for v in mix.values()):
            raise ValueError("needs at least one device with a positive share")
        return mix


class CodecSection(_Section):
    # client -> server: float32 | fp16 | bf16 | q8 | q4 | q2 | q1 | topk<fraction> | sign | rot | rand<fraction>,
    # | rows (only the rows that changed), chained by + (e.g. "rot+rand0.3+q2": rotate, keep a seeded random 30%, 2 bits
    # each); or "seeds"
    # (MeZO clients send their (seed, projected gradient) pairs and the server replays them)
    up: str = "float32"
    down: str = "float32"  # server -> client, applied to the global weights
    error_feedback: bool = True  # biased uplink (topk, sign): clients keep what was not sent, add it next time
    seed: int = 4

    @field_validator("up", "down")
    @classmethod
    def _known_codec(cls, spec: str, info: ValidationInfo) -> str:
        if spec == "seeds" and info.field_name == "up":
            return spec
        from pocketlearn.federated.codecs import make_codec

        make_codec(spec)  # its error names the stage and the form it takes (topk0.01, q8, ...)
        return spec


class SecAggSection(_Section):
    enabled: bool = False  # the server only ever sees the sum of the clients' (weighted) updates
    clip: float = Field(1.0, gt=0)  # per-coordinate range of a client's weighted update, agreed in advance
    # share of a round's clients whose inputs must arrive, and of a client's share holders (itself and its
    # neighbours) that recover its masks: relative, so valid at every cohort size
    threshold: float = Field(0.5, gt=0, le=1)
    neighbours: int | None = Field(None, ge=2)  # SecAgg+: mask with this many neighbours instead of all pairs


class AttackSection(_Section):
    fraction: float = Field(0.0, ge=0, lt=1)  # share of clients that are malicious for the whole run
    kind: Literal["sign-flip", "scale", "random", "alie", "ipm"] = "sign-flip"
    scale: float = Field(10.0, gt=0)  # sign-flip/scale factor, random's spread, IPM's epsilon (ALIE: z from n, f)
    seed: int = 5


class EvalSection(_Section):
    every: int = Field(1, ge=1)  # evaluate the global model every N rounds (and after the last)
    batch_size: int = Field(1024, ge=1)
    personalize_clients: int = Field(0, ge=0)  # clients evaluated before/after local fine-tuning at the end
    personalize_epochs: int = Field(1, ge=1)


class AsynchronousSection(_Section):
    """FedBuff (federated/asynchronous.py): no rounds; the server applies its strategy every ``buffer`` arrivals."""

    buffer: int = Field(0, ge=0)  # arrivals per server update (K); 0: synchronous rounds
    concurrency: int = Field(0, ge=0)  # clients training at any moment; 0: clients_per_round
    staleness: float = Field(0.5, ge=0)  # an update that is tau versions old weighs (1 + tau) ** -staleness


class TrackingSection(_Section):
    # metrics of every round as TensorBoard event files in this folder (view: tensorboard --logdir DIR); where a
    # run is watched, not what it is: it may change when the run resumes
    tensorboard: str | None = None


class RunConfig(_Section):
    name: str = "run"
    seed: int = 0  # model initialisation (torch.manual_seed)
    rounds: int = Field(10, ge=1)
    clients_per_round: int = Field(10, ge=1)
    sampling_seed: int = 1
    engine: Literal["inprocess", "ray"] = "inprocess"
    vectorize: bool = True  # train a round's clients together where the model allows
    checkpoint: bool = True
    max_failed_rounds: int = Field(1, ge=1)  # rounds in a row that may apply no update before the run stops
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    client: ClientSection = ClientSection()
    strategy: StrategySection = StrategySection()
    devices: DevicesSection = DevicesSection()
    codec: CodecSection = CodecSection()
    attack: AttackSection = AttackSection()
    secagg: SecAggSection = SecAggSection()
    eval: EvalSection = EvalSection()
    tracking: TrackingSection = TrackingSection()
    asynchronous: AsynchronousSection = AsynchronousSection()


def parse_config(raw: dict[str, Any], *, source: str = "config", overrides: Sequence[str] = ()) -> RunConfig:
    """Validate a config dict; the error names each bad key by its dotted path, and the value seen.

    ``overrides``: the ``--set`` items applied to ``raw``; a bad value that came from one is blamed on it, not on
    ``source``. Then every rule between keys (:mod:`~pocketlearn.federated.checks`), all reported at once.
    """
    from pocketlearn.federated.checks import check_run

    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as err:
        problems = [(".".join(str(p) for p in e["loc"]) or "(top)", e) for e in err.errors()]
        blamed = [_override_of(key, overrides) for key, _ in problems]
        lines = [f"  {key}: {e['msg']}{_seen(e)}" + (f" (from --set {item})" if item else "")
                 for (key, e), item in zip(problems, blamed, strict=True)]
        where = "--set value" if all(blamed) else source
        raise ConfigError(f"invalid {where}:\n" + "\n".join(lines)) from None
    check_run(config, source)
    return config


def _override_of(key: str, overrides: Sequence[str]) -> str | None:
    """The last ``--set`` item that set ``key`` (or a section or value around it), if any."""
    for item in reversed(overrides):
        set_key = item.partition("=")[0].strip()
        if key == set_key or key.startswith(set_key + ".") or set_key.startswith(key + "."):
            return item
    return None


def _seen(error: Any) -> str:
    value = error.get("input")
    if isinstance(value, dict) or error.get("type") == "missing":
        return ""
    shown = repr(value)
    return f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as TOML, else taken as strings)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: write it as key=value, e.g. --set rounds=5 or --set client.lr=0.1")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        node = raw
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
        node[leaf] = value
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """A run config from a TOML file, or a bundled example by name (``phones``), with ``--set`` overrides."""
    from pocketlearn.bundled import config_path

    path = config_path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    devices = raw.get("devices")
    if isinstance(devices, dict) and isinstance(devices.get("profiles"), str):  # a file beside the config
        devices["profiles"] = str(path.parent / devices["profiles"])  # (an absolute path stays as it is)
    return parse_config(apply_overrides(raw, overrides or []), source=str(path), overrides=overrides or ())
