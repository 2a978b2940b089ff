"""The knobs of differentially private federated training, in one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, get_args

from pocketlearn.errors import ConfigError, Validated, number_problem
from pocketlearn.methods.base import WireKind

MODES = ("central", "local")
NOT_PRIVATE = "noise reproducible from the seed: not private"
SECURE = "secure: drawn from the OS's CSPRNG"
ACCOUNTANTS = ("rdp", "pld")


@dataclass(frozen=True, kw_only=True)
class DPConfig(Validated):
    """How client updates are clipped and noised, and how the privacy they spend is counted.

    ``mode="central"`` is DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent Language
    Models", ICLR 2018): the server adds noise to the sum of clipped updates, so clients must trust it (or
    secure aggregation) with their clipped updates. ``mode="local"``: each client noises its own clipped update
    before sending; no trust needed, far more noise in the mean.
    """

    clip: float = field(default=1.0, metadata={"help": "L2 bound on each client's update (the start, if adaptive)."})
    adaptive: bool = field(default=False, metadata={"help": "Let the bound follow a quantile of update norms."})
    target_quantile: float = field(default=0.5, metadata={"help": "Fraction of clients the adaptive bound keeps "
                                                                  "unclipped."})
    clip_lr: float = field(default=0.2, metadata={"help": "Geometric step size of the adaptive bound."})
    clipped_count_stddev: float | None = field(default=None, metadata={
        "help": "Noise std on the count of unclipped clients (adaptive); default 0.05 x expected clients."})
    noise_multiplier: float = field(default=1.0, metadata={"help": "Noise std / clip (z); 0 turns noise off."})
    mode: str = field(default="central", metadata={"help": "'central' (server adds noise) or 'local' (clients do)."})
    accountant: str = field(default="rdp", metadata={"help": "'rdp' or 'pld' (tighter, slower)."})
    delta: float = field(default=1e-5, metadata={"help": "The delta of (epsilon, delta)-DP; below 1/num_clients."})
    target_epsilon: float | None = field(default=None, metadata={"help": "Refuse rounds that would exceed it."})
    reproducible_noise: bool = field(default=False, metadata={
        "help": "Research only: draw the noise from (seed, round) so runs repeat; anyone with the config can "
                "then subtract it (not private). `fed serve` refuses it."})
    seed: int = field(default=0, metadata={"help": "Seed of the noise when reproducible_noise is on; unused "
                                                   "otherwise (noise then comes from the OS's CSPRNG)."})
    kind_scale: dict[str, float] = field(default_factory=dict, metadata={
        "help": "Mixed-method runs: each update kind's unit relative to clip (dense, lora, zo; default 1)."})

    def problems(self) -> list[str]:
        """Every invalid value at once."""
        num = number_problem  # short, so that each check stays one line
        out = [*num("clip", self.clip, lambda x: x > 0, "> 0"),
               *num("target_quantile", self.target_quantile, lambda x: 0 < x < 1, "in (0, 1)"),
               *num("clip_lr", self.clip_lr, lambda x: x > 0, "> 0"),
               *num("noise_multiplier", self.noise_multiplier, lambda x: x >= 0, ">= 0"),
               *num("delta", self.delta, lambda x: 0 < x < 1, "in (0, 1)")]
        if self.clipped_count_stddev is not None:
            out += num("clipped_count_stddev", self.clipped_count_stddev, lambda x: x > 0, "> 0")
        if self.target_epsilon is not None:
            out += num("target_epsilon", self.target_epsilon, lambda x: x > 0, "> 0")
        for kind, scale in self.kind_scale.items():
            if kind not in get_args(WireKind):
                out.append(f"kind_scale: unknown kind {kind!r}; use one of {', '.join(get_args(WireKind))}")
            out += num(f"kind_scale.{kind}", scale, lambda x: x > 0, "> 0")
        if self.mode not in MODES:
            out.append(f"mode should be one of {list(MODES)}, got {self.mode!r}")
        if self.accountant not in ACCOUNTANTS:
            out.append(f"accountant should be one of {list(ACCOUNTANTS)}, got {self.accountant!r}")
        if not isinstance(self.reproducible_noise, bool):
            out.append(f"reproducible_noise should be true or false, got {self.reproducible_noise!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            out.append(f"seed should be an integer >= 0, got {self.seed!r}")
        if self.adaptive and self.mode == "local":
            out.append("adaptive clipping needs the server's noisy count of unclipped clients, which local mode "
                       "does not have; use adaptive = false (a fixed clip) with mode = 'local'")
        return out

    @property
    def noise_source(self) -> str:
        """Where the noise comes from, in words a run's summary, metrics and report show."""
        return NOT_PRIVATE if self.reproducible_noise else SECURE

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> DPConfig:
        """Build from plain values (a TOML table); an unknown key is a ConfigError naming the known ones."""
        known = sorted(f.name for f in fields(cls))
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"DPConfig has no option {', '.join(map(repr, unknown))}; options are {known}")
        return cls(**options)



def refuse_for_deployment(dp: DPConfig | dict[str, Any] | None) -> None:
    """ConfigError if a deployed run would use noise that anyone holding its config can regenerate."""
    if dp is None:
        return
    reproducible = dp.reproducible_noise if isinstance(dp, DPConfig) else bool(dp.get("reproducible_noise"))
    if reproducible:
        raise ConfigError("dp.reproducible_noise = true draws the DP noise from the config's seed, so anyone who "
                          "knows the config can subtract it (noise reproducible from the seed: not private); a "
                          "deployed run refuses it. Remove dp.reproducible_noise (noise then comes from the OS's "
                          "CSPRNG); keep it for simulations only")
