"""Malicious clients, for studying robust aggregation: a fixed fraction of the population poisons its updates.

``sign-flip`` sends -scale x its update (pushes the model backwards), ``scale`` sends scale x its update (a
boosted honest-looking update), ``random`` sends Gaussian noise scale x the update's own spread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from pocketlearn.federated.updates import RoundUpdates

AttackKind = Literal["sign-flip", "scale", "random"]


@dataclass(frozen=True)
class Attack:
    malicious: np.ndarray  # bool per client id
    kind: AttackKind = "sign-flip"
    scale: float = 10.0
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
        rows = [k for k, c in enumerate(updates.client_ids) if self.malicious[c]]
        if not rows:
            return 0
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
