"""Double masking (Bonawitz et al. 2017, §4): pairwise masks that cancel in the sum, plus a self-mask.

Client u sends y_u = x_u + PRG(b_u) + Σ_{v>u} PRG(s_uv) − Σ_{v<u} PRG(s_uv) (mod 2^bits). Summed over all
clients the pairwise terms cancel; the server removes the self-masks with the reconstructed b_u of the
survivors and, for a client v that dropped after the others masked with it, the survivors' uncancelled
PRG(s_uv) from v's reconstructed key. A late y_v still carries PRG(b_v), which the server never learns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from .crypto import expand


def pair_sign(u: int, v: int) -> int:
    """+1 if client u adds the mask it shares with v, −1 if it subtracts it."""
    return 1 if v > u else -1


def _add(y: np.ndarray, seed: bytes, sign: int) -> None:
    stream = expand(seed, y.size, y.dtype)
    if sign > 0:
        y += stream
    else:
        y -= stream


def mask(q: np.ndarray, client: int, self_seed: bytes, pair_seeds: Mapping[int, bytes]) -> np.ndarray:
    """y_u from the quantized x_u (D,) ring elements; ``pair_seeds[v]`` is s_uv."""
    y = q.copy()
    _add(y, self_seed, +1)
    for v, seed in pair_seeds.items():
        _add(y, seed, pair_sign(client, v))
    return y


def unmask(total: np.ndarray, self_seeds: Iterable[bytes],
           orphan_pairs: Iterable[tuple[int, int, bytes]]) -> np.ndarray:
    """Σ x_u of the survivors from Σ y_u: remove each PRG(b_u) and each (survivor u, dropped v, s_uv) mask."""
    x = total.copy()
    for seed in self_seeds:
        _add(x, seed, -1)
    for u, v, seed in orphan_pairs:
        _add(x, seed, -pair_sign(u, v))
    return x
