"""Seed exchange for zeroth-order training (FedKSeed): a MeZO client sends its (seed, projected-gradient) pairs.

Twelve bytes a step instead of the model: the server regenerates every perturbation from its seed and replays
the steps on the weights the client started from, ending bit for bit where the client ended.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from pocketlearn.federated.codecs.format import Frame, PayloadError, pack, unpack

SPEC = "seeds"


def encode_history(history: Sequence[tuple[int, float]]) -> bytes:
    seeds = np.array([s for s, _ in history], dtype=np.int64)
    grads = np.array([g for _, g in history], dtype=np.float32)
    return pack(Frame({"seed": seeds, "g": grads}), [SPEC])


def decode_history(payload: bytes | memoryview) -> list[tuple[int, float]]:
    """The (seed, projected gradient) pairs of a seed-exchange payload; any other bytes raise PayloadError."""
    chain, frame = unpack(payload)
    if chain != [SPEC]:
        raise PayloadError(f"expected a seed-exchange payload, got codec {'+'.join(chain) or 'float32'!r}")
    seeds, grads = frame.arrays.get("seed"), frame.arrays.get("g")
    if seeds is None or grads is None or seeds.dtype != np.int64 or grads.dtype != np.float32 or \
            seeds.shape != grads.shape or seeds.ndim != 1 or len(frame.arrays) != 2 or frame.meta:
        raise PayloadError("seed-exchange payload lacks matching 'seed' and 'g' arrays")
    if len(seeds) and (seeds.min() < 0 or seeds.max() >= 2**32):
        raise PayloadError("seed-exchange payload holds seeds outside 32 bits")
    if not np.isfinite(grads).all():
        raise PayloadError("seed-exchange payload holds non-finite projected gradients")
    return [(int(s), float(g)) for s, g in zip(seeds.tolist(), grads.tolist(), strict=True)]


def replay_delta(start: Mapping[str, Tensor], history: Sequence[tuple[int, float]], options: dict[str, Any]
                 ) -> dict[str, Tensor]:
    """The update a MeZO client made: its steps replayed on a copy of ``start`` (the tensors it trained)."""
    from pocketlearn.errors import ConfigError
    from pocketlearn.methods.mezo import MezoConfig, replay

    try:
        config = MezoConfig.from_dict(options)
        params = {n: t.detach().clone() for n, t in start.items()}
        replay(params, history, config)  # type: ignore[arg-type]
    except ConfigError as err:
        raise PayloadError(f"seed-exchange payload does not replay: {err}") from None
    return {n: params[n] - start[n] for n in params}
