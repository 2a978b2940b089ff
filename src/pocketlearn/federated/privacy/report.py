"""The device's half of local differential privacy: it clips and noises its own update before it leaves.

A simulation applies both steps to each client's row (:meth:`PrivacyMechanism.privatize`, standing in for the
devices); a deployed device applies them itself with the same functions. Either way the noise comes from the
device's own secure randomness (:func:`secure_generator`), never from anything the server sends or keeps, so
the server cannot strip it: it only sums the reports and charges the accountant. The un-noised update never
leaves the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from pocketlearn.errors import ConfigError
from pocketlearn.federated.privacy.clipping import clip_to_norm_
from pocketlearn.federated.privacy.noise import add_local_noise_, secure_generator
from pocketlearn.federated.updates import ClientUpdate, RoundUpdates


@dataclass(frozen=True)
class LocalNoise:
    """Clip one client's whole update to L2 norm ``clip``, then add N(0, std²) to every coordinate it sends.

    ``rnd`` is the mechanism's round (for the device's log; it seeds nothing). ``unit``: in mixed-method runs the
    bound holds for update / unit, the unit of the update's kind (``dp.kind_scale``), as the server's
    wire-space rule expects. There is deliberately no seed: the device's noise is its own secret.
    """

    clip: float
    std: float
    rnd: int
    unit: float = 1.0

    def apply(self, client: int, delta: Mapping[str, Tensor], generator: torch.Generator | None = None
              ) -> dict[str, Tensor]:
        """``delta`` clipped and noised (a new dict).

        The noise comes from ``generator``, by default a fresh :func:`secure_generator` (the device's own).
        """
        row = RoundUpdates.stack([ClientUpdate(client, 1, {n: t / self.unit for n, t in delta.items()})])
        clip_to_norm_(row, self.clip)
        own = generator if generator is not None else secure_generator()
        add_local_noise_(row, self.std, lambda _client: own)
        return {n: d[0] * self.unit for n, d in row.deltas.items()}

    def to_dict(self) -> dict[str, float | int]:
        return {"clip": self.clip, "std": self.std, "rnd": self.rnd, "unit": self.unit}

    @classmethod
    def from_dict(cls, d: Mapping[str, float | int]) -> LocalNoise:
        """From a message; a ``seed`` an older server still sends is ignored (the device never uses one)."""
        try:
            noise = cls(float(d["clip"]), float(d["std"]), int(d["rnd"]), float(d["unit"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"local DP settings {dict(d)!r} are malformed ({err}); the server should send clip, "
                              "std, rnd and unit") from err
        if not (noise.clip > 0 and noise.std >= 0 and noise.unit > 0) or any(
                v != v or v in (float("inf"), float("-inf")) for v in (noise.clip, noise.std, noise.unit)):
            raise ConfigError(f"local DP settings need clip > 0, std >= 0 and unit > 0, all finite; got {noise}")
        return noise
