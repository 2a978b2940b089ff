"""LEAF's Synthetic(α, β): every client its own logistic model and its own input distribution.

The FedProx paper's benchmark (Li et al., MLSys 2020; LEAF, Caldas et al. 2018): client k draws u_k ~ N(0, α²)
and B_k ~ N(0, β²); its model W_k, b_k has entries ~ N(u_k, 1), its inputs x ~ N(v_k, Σ) with v_k's entries
~ N(B_k, 1) and Σ diagonal, Σ_jj = j^-1.2; its label is argmax(W_k x + b_k). α sets how far the clients'
models are apart, β how far their inputs are. Everything about client k comes from (seed, k), so a population
of any size costs nothing until a client is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pocketlearn.errors import ConfigError

DIM, CLASSES = 60, 10
_SCALE = np.arange(1, DIM + 1, dtype=np.float64) ** -0.6  # sqrt of Σ_jj = j^-1.2

TRAIN, TEST = 1, 2  # a client's two sample streams (stream 0 is its model)


@dataclass(frozen=True)
class Synthetic:
    """The generator of one Synthetic(α, β) population."""

    alpha: float = 0.5
    beta: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0:
            raise ConfigError(f"Synthetic(α, β) needs α, β ≥ 0 (0: every client alike), got ({self.alpha}, "
                              f"{self.beta})")

    def client_model(self, client: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Client ``client``'s (W (DIM, CLASSES), b (CLASSES,), input mean v (DIM,))."""
        rng = np.random.default_rng([self.seed, client, 0])
        u, shift = rng.normal(0.0, self.alpha), rng.normal(0.0, self.beta)
        return rng.normal(u, 1.0, (DIM, CLASSES)), rng.normal(u, 1.0, CLASSES), rng.normal(shift, 1.0, DIM)

    def samples(self, client: int, n: int, stream: int = TRAIN) -> tuple[Tensor, Tensor]:
        """``n`` samples of client ``client``: inputs (n, DIM) float32, labels (n,) int64."""
        w, b, v = self.client_model(client)
        x = v + np.random.default_rng([self.seed, client, stream]).standard_normal((n, DIM)) * _SCALE
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy((x @ w + b).argmax(1).astype(np.int64))

    def held_out(self, clients: np.ndarray, per_client: int) -> tuple[Tensor, Tensor]:
        """A test set: ``per_client`` fresh samples of each of ``clients`` (their own stream, never trained on)."""
        parts = [self.samples(int(c), per_client, TEST) for c in clients]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
