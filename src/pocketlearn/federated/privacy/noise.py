"""Gaussian noise from seeded generators, so that a private run is reproducible and resumes bit for bit.

Noise is drawn in float32 on the CPU from a generator derived from (seed, round[, client]) and then moved to
the tensor's device: the same seed gives the same noise on any accelerator and after any resume.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch
from torch import Tensor

from pocketlearn.federated.updates import RoundUpdates


def secure_generator() -> torch.Generator:
    """A fresh CPU generator seeded with 64 bits from the OS's CSPRNG: noise nobody can regenerate.

    Its state is secret: keep it only where the noise it protects is kept (the server checkpoint), never in a
    config, a metrics file or a message.
    """
    return torch.Generator().manual_seed(secrets.randbits(64))


def derived_generator(seed: int, *keys: int) -> torch.Generator:
    """A torch generator seeded from (seed, *keys) alone, independent of every other stream."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def gaussian_like(t: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """N(0, std²) noise of ``t``'s shape, dtype and device."""
    return (torch.randn(t.shape, generator=generator, dtype=torch.float32) * std).to(t)


def add_central_noise_(sums: dict[str, Tensor], std: float, generator: torch.Generator) -> None:
    """Add N(0, std²) to every coordinate of the summed updates, in place, in name order (reproducible)."""
    if std == 0:
        return
    for name in sorted(sums):
        sums[name].add_(gaussian_like(sums[name], std, generator))


def add_local_noise_(updates: RoundUpdates, std: float, *, seed: int, rnd: int) -> None:
    """Each client's own N(0, std²) noise on the rows it sends, in place (local DP, simulated server side).

    Client c's noise comes from (seed, rnd, c), as its device would draw it, so a simulated run and a deployed
    one with the same seed agree. Rows of parameters a client did not train are not sent and stay zero.
    """
    if std == 0:
        return
    for k, client in enumerate(updates.client_ids):
        generator = derived_generator(seed, rnd, client)
        for name in sorted(updates.deltas):
            mask = updates.trained.get(name)
            if mask is None or bool(mask[k]):
                row = updates.deltas[name][k]  # (*shape)
                row.add_(gaussian_like(row, std, generator))
