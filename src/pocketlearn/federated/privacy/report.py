"""The device's half of local differential privacy: it clips and noises its own update before it leaves.

A simulation applies both steps to each client's row on the server (:meth:`PrivacyMechanism.privatize`); a
deployed device applies them itself with the same functions and the same generator, derived from (seed,
round, client), so the deployed run adds exactly the simulation's noise and the server only sums the reports
and charges the accountant. The un-noised update never leaves the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from pocketlearn.federated.privacy.clipping import clip_to_norm_
from pocketlearn.federated.privacy.noise import add_local_noise_
from pocketlearn.federated.updates import ClientUpdate, RoundUpdates


@dataclass(frozen=True)
class LocalNoise:
    """Clip one client's whole update to L2 norm ``clip``, then add N(0, std²) to every coordinate it sends.

    ``rnd`` is the mechanism's round (it seeds the noise). ``unit``: in mixed-method runs the bound holds for
    update / unit, the unit of the update's kind (``dp.kind_scale``), as the server's wire-space rule expects.
    """

    clip: float
    std: float
    seed: int
    rnd: int
    unit: float = 1.0

    def apply(self, client: int, delta: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``delta`` clipped and noised as the simulation does it to client ``client``'s row (a new dict)."""
        row = RoundUpdates.stack([ClientUpdate(client, 1, {n: t / self.unit for n, t in delta.items()})])
        clip_to_norm_(row, self.clip)
        add_local_noise_(row, self.std, seed=self.seed, rnd=self.rnd)
        return {n: d[0] * self.unit for n, d in row.deltas.items()}

    def to_dict(self) -> dict[str, float | int]:
        return {"clip": self.clip, "std": self.std, "seed": self.seed, "rnd": self.rnd, "unit": self.unit}

    @classmethod
    def from_dict(cls, d: Mapping[str, float | int]) -> LocalNoise:
        return cls(float(d["clip"]), float(d["std"]), int(d["seed"]), int(d["rnd"]), float(d["unit"]))
