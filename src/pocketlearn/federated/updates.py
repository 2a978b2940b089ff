"""What clients send back in a round, stacked so that strategies aggregate with tensor ops, not Python loops."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class ClientUpdate:
    """One client's contribution: the change of the parameters it trained (new - global)."""

    client_id: int
    num_samples: int
    delta: dict[str, Tensor]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RoundUpdates:
    """The updates of the K clients that finished a round.

    ``deltas[name]`` is (K, *shape). Clients may train different parameter subsets (the planner can give a
    small device bias-only training while a laptop does full backprop); ``trained[name]`` is then a bool (K,)
    saying which rows are real, and strategies aggregate each parameter over the clients that trained it.
    Parameters missing from ``trained`` were trained by every client; rows of clients that did not train a
    parameter are zero.
    """

    client_ids: list[int]
    num_samples: Tensor  # (K,) float32
    deltas: dict[str, Tensor]
    trained: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.client_ids)

    def rows(self, name: str) -> tuple[Tensor, Tensor]:
        """The deltas of ``name`` from the clients that trained it, with their sample counts."""
        mask = self.trained.get(name)
        if mask is None:
            return self.deltas[name], self.num_samples
        return self.deltas[name][mask], self.num_samples[mask]

    def client_delta(self, k: int) -> dict[str, Tensor]:
        """Client k's own update: the rows of the parameters it trained."""
        return {n: d[k] for n, d in self.deltas.items() if n not in self.trained or self.trained[n][k]}

    def client_norms(self) -> Tensor:
        """L2 norm of each client's whole update (K,), over every parameter it trained."""
        return torch.stack([d.flatten(1).pow(2).sum(1) for d in self.deltas.values()]).sum(0).sqrt()

    def scale_clients(self, factors: Tensor) -> None:
        """Multiply client k's update by ``factors[k]`` in place (norm bounding, clipping)."""
        for d in self.deltas.values():
            d.mul_(factors.to(d).view(-1, *([1] * (d.dim() - 1))))

    @classmethod
    def stack(cls, updates: Sequence[ClientUpdate]) -> RoundUpdates:
        """Stack per-client deltas; a parameter some clients did not train gets zero rows and a mask."""
        if not updates:
            raise ValueError("no client updates to stack")
        names = sorted({n for u in updates for n in u.delta})
        deltas: dict[str, Tensor] = {}
        trained: dict[str, Tensor] = {}
        for name in names:
            present = [name in u.delta for u in updates]
            like = next(u.delta[name] for u in updates if name in u.delta)
            deltas[name] = torch.stack([u.delta[name] if p else torch.zeros_like(like)
                                        for u, p in zip(updates, present, strict=True)])
            if not all(present):
                trained[name] = torch.tensor(present)
        counts = torch.tensor([float(u.num_samples) for u in updates])
        return cls([u.client_id for u in updates], counts, deltas, trained)
