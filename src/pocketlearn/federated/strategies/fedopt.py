"""Adaptive server optimizers (Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2).

Each round the weighted mean client delta Δ (the negative pseudo-gradient) feeds a server optimizer:
    m ← β1·m + (1−β1)·Δ
    v ← β2·v + (1−β2)·Δ²                 FedAdam
    v ← v − (1−β2)·Δ²·sign(v − Δ²)       FedYogi
    v ← v + Δ²                           FedAdagrad (β2 unused)
    w ← w + lr·m / (√v + τ)
with m = 0 and v = τ² at the start (the paper asks v ≥ τ²) and, as in the paper, no bias correction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from pocketlearn.errors import Validated, number_problem
from pocketlearn.federated.strategies.aggregate import weighted_means
from pocketlearn.federated.strategies.base import Strategy
from pocketlearn.federated.strategies.checks import weighting_problem
from pocketlearn.federated.updates import RoundUpdates


@dataclass(frozen=True, kw_only=True)
class FedOpt(Validated, Strategy):
    """The shared part of FedAdam, FedYogi and FedAdagrad; subclasses give the second-moment rule."""

    weighting: str = "samples"  # "samples" | "uniform": how the client deltas are averaged
    lr: float = 1e-2  # server learning rate η
    betas: tuple[float, float] = (0.9, 0.99)
    tau: float = 1e-3  # adaptivity: larger τ, less adaptive (closer to server SGD with momentum)
    _m: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)  # first moments
    _v: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)  # second moments

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):  # TOML arrays arrive as lists
            object.__setattr__(self, "betas", tuple(self.betas))
        super().__post_init__()

    def problems(self) -> list[str]:
        out = [*weighting_problem(self.weighting), *number_problem("lr", self.lr, lambda x: x > 0, "> 0"),
               *number_problem("tau", self.tau, lambda x: x > 0, "> 0")]
        if not isinstance(self.betas, tuple) or len(self.betas) != 2:
            return [*out, f"betas should be two numbers (beta1, beta2), got {self.betas!r}"]
        for i, beta in enumerate(self.betas):
            out += number_problem(f"betas[{i}]", beta, lambda x: 0 <= x < 1, "in [0, 1)")
        return out

    def apply(self, params: dict[str, Tensor], updates: RoundUpdates) -> None:
        beta1 = self.betas[0]
        with torch.no_grad():
            for name, delta in weighted_means(updates, self.weighting):
                p = params[name]
                m, v = self._moments(name, p)
                m.mul_(beta1).add_(delta, alpha=1 - beta1)
                self._second_moment(v, delta)
                p.addcdiv_(m, v.sqrt().add_(self.tau), value=self.lr)

    def _moments(self, name: str, p: Tensor) -> tuple[Tensor, Tensor]:
        m = self._m.get(name)
        if m is None or m.device != p.device:  # first round, or state loaded onto another device
            self._m[name] = m = torch.zeros_like(p) if m is None else m.to(p.device)
            v = self._v.get(name)
            self._v[name] = torch.full_like(p, self.tau**2) if v is None else v.to(p.device)
        return m, self._v[name]

    def _second_moment(self, v: Tensor, delta: Tensor) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"m": {n: t.clone() for n, t in self._m.items()}, "v": {n: t.clone() for n, t in self._v.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._m.clear()
        self._v.clear()
        self._m.update({n: t.clone() for n, t in state.get("m", {}).items()})
        self._v.update({n: t.clone() for n, t in state.get("v", {}).items()})


@dataclass(frozen=True, kw_only=True)
class FedAdam(FedOpt):
    """Adam on the server: per-coordinate step sizes.

    For models whose parameters see very different update scales (embeddings, transformers, sparse
    features); the usual first choice among the adaptive ones.
    """

    name = "fedadam"

    def _second_moment(self, v: Tensor, delta: Tensor) -> None:
        beta2 = self.betas[1]
        v.mul_(beta2).addcmul_(delta, delta, value=1 - beta2)


@dataclass(frozen=True, kw_only=True)
class FedYogi(FedOpt):
    """Yogi on the server: FedAdam whose second moment changes additively.

    v cannot collapse after a few quiet rounds nor jump after one loud one, so the step size is steadier
    than FedAdam's under heterogeneous clients; the paper's best performer on several tasks.
    """

    name = "fedyogi"

    def _second_moment(self, v: Tensor, delta: Tensor) -> None:
        d2 = delta * delta
        v.addcmul_(d2, torch.sign(v - d2), value=-(1 - self.betas[1]))


@dataclass(frozen=True, kw_only=True)
class FedAdagrad(FedOpt):
    """Adagrad on the server: the second moment only grows, so steps shrink over the run.

    Suits sparse features (rarely updated coordinates keep large steps) and runs that should settle.
    ``betas[1]`` is unused.
    """

    name = "fedadagrad"

    def _second_moment(self, v: Tensor, delta: Tensor) -> None:
        v.addcmul_(delta, delta)
