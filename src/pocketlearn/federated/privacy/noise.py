"""Gaussian noise for differential privacy, drawn from generators nobody outside can reproduce.

DP noise protects clients only if nobody can regenerate and subtract it, so it comes from
:func:`secure_generator` (seeded from the OS's CSPRNG). The server keeps its central generator's state in its
checkpoint alone, so a resumed run still ends bit for bit where an uninterrupted one does (the checkpoint is
therefore secret). :func:`derived_generator` (seed, round[, client]) remains for reproducible research runs
(``dp.reproducible_noise``), which are marked not private. Noise is drawn in float32 on the CPU and then moved
to the tensor's device: the same generator state gives the same noise on any accelerator.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

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


def add_local_noise_(updates: RoundUpdates, std: float, generator_of: Callable[[int], torch.Generator]) -> None:
    """Each client's own N(0, std²) noise on the rows it sends, in place (local DP).

    ``generator_of(client)`` is that client's own randomness: on a device a fresh :func:`secure_generator`, so
    nothing the server holds regenerates it. Rows of parameters a client did not train are not sent and stay
    zero.
    """
    if std == 0:
        return
    for k, client in enumerate(updates.client_ids):
        generator = generator_of(int(client))
        for name in sorted(updates.deltas):
            mask = updates.trained.get(name)
            if mask is None or bool(mask[k]):
                row = updates.deltas[name][k]  # (*shape)
                row.add_(gaussian_like(row, std, generator))
