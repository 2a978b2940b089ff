"""Malicious clients, for studying robust aggregation: a fixed fraction of the population poisons its updates.

``sign-flip`` sends -scale x its update (pushes the model backwards), ``scale`` sends scale x its update (a
boosted honest-looking update), ``random`` sends Gaussian noise scale x the update's own spread.

Two attacks from the literature are omniscient, as in their papers: the malicious clients of a round see the
benign clients' updates of that round (in a mixed-method run, of their method group) and all send the same
crafted update.

- ``alie``, "A Little Is Enough" (Baruch et al., NeurIPS 2019): mean - z·std of the benign updates, per
  coordinate, with z = Φ⁻¹((n - s) / n), s = ⌊n/2 + 1⌋ - f, for n clients of which f are malicious: a shift
  small enough to hide among the honest spread (median and Krum keep it), applied every round.
- ``ipm``, inner-product manipulation (Xie et al., "Fall of Empires", UAI 2019): -ε x the benign mean
  (ε = ``scale``), so that the aggregate's inner product with the true step turns small or negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from pocketlearn.federated.updates import RoundUpdates

AttackKind = Literal["sign-flip", "scale", "random", "alie", "ipm"]
OMNISCIENT = ("alie", "ipm")


def alie_z(n: int, f: int) -> float:
    """Baruch et al.'s z_max for n clients, f of them malicious: Φ⁻¹((n - s) / n), s = ⌊n/2 + 1⌋ - f.

    s is how many benign clients must look "further from the mean" than the malicious ones for those to be
    chosen by a majority-based defence; s is kept >= 1 so that z stays finite when f reaches n / 2.
    """
    s = max(n // 2 + 1 - f, 1)
    return NormalDist().inv_cdf((n - s) / n)


def alie_update(benign: Tensor, n: int, f: int) -> Tensor:
    """Mean - z·std per coordinate of the benign rows (b, *shape); the sample std (one row: std 0)."""
    std = benign.std(dim=0) if len(benign) > 1 else torch.zeros_like(benign[0])
    return benign.mean(dim=0) - alie_z(n, f) * std


def ipm_update(benign: Tensor, epsilon: float) -> Tensor:
    """-ε x the mean of the benign rows (b, *shape)."""
    return -epsilon * benign.mean(dim=0)


@dataclass(frozen=True)
class Attack:
    malicious: np.ndarray  # bool per client id
    kind: AttackKind = "sign-flip"
    scale: float = 10.0  # sign-flip / scale factor, random's spread, IPM's ε; ALIE takes z from n and f
    seed: int = 5

    @classmethod
    def on_fraction(cls, num_clients: int, fraction: float, kind: AttackKind, scale: float, seed: int) -> Attack:
        """Make ``round(fraction x num_clients)`` clients, drawn by ``seed``, malicious for the whole run."""
        chosen = np.random.default_rng([seed, 0]).permutation(num_clients)[: round(fraction * num_clients)]
        mask = np.zeros(num_clients, dtype=bool)
        mask[chosen] = True
        return cls(mask, kind, scale, seed)

    def poison(self, updates: RoundUpdates, rnd: int) -> int:
        """Replace the malicious clients' rows in place; returns how many there were this round."""
        bad = torch.tensor([bool(self.malicious[c]) for c in updates.client_ids])
        rows = bad.nonzero().flatten().tolist()
        if not rows:
            return 0
        if self.kind in OMNISCIENT:
            self._collude(updates, bad)
            return len(rows)
        g = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, rnd]).integers(2**62)))
        for d in updates.deltas.values():
            for k in rows:
                if self.kind == "sign-flip":
                    d[k] *= -self.scale
                elif self.kind == "scale":
                    d[k] *= self.scale
                else:
                    d[k] = torch.randn(d[k].shape, generator=g) * self.scale * d[k].std().clamp_min(1e-8)
        return len(rows)

    def _collude(self, updates: RoundUpdates, bad: Tensor) -> None:
        """Every malicious row of a parameter gets the update crafted from that parameter's benign rows.

        Only clients that trained the parameter take part. With no benign row (all of them malicious) the
        malicious clients' own honest updates stand in for the benign ones, as in ALIE's non-omniscient form.
        """
        n, f = len(updates), int(bad.sum())
        for name, d in updates.deltas.items():  # d (K, *shape)
            trained = updates.trained.get(name, torch.ones(len(d), dtype=torch.bool))
            targets, benign = trained & bad, trained & ~bad
            if not targets.any():
                continue
            source = d[benign] if benign.any() else d[targets]
            crafted = alie_update(source, n, f) if self.kind == "alie" else ipm_update(source, self.scale)
            d[targets] = crafted.to(d)
