"""MeZO: zeroth-order SGD from two forward passes, with the noise regenerated from a seed, never stored.

One step (n_perturbations = 1), for the perturbed parameters θ and a fresh step seed s:
    θ += εz; l+ = L(θ);  θ -= 2εz; l- = L(θ);  θ += εz  (back to θ, up to float round-off)
    g = (l+ - l-) / 2ε  (the projected gradient, an estimate of ∇L·z)
    θ -= lr (g z + wd θ)
where z ~ N(0, I) is drawn parameter by parameter from (s, the parameter's position in sorted-name order).
Drawing z is what costs beyond the two forward passes, so the restore (θ += εz) and the update share one
draw: three draws of z per step, in blocks that are drawn in parallel (see :func:`noise`).
A step is fully described by (s, g), so :func:`replay` rebuilds the trained weights from a copy of the
starting ones and the list of those pairs: the seed exchange of federated zeroth-order training (FedKSeed).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from pocketlearn.errors import ConfigError
from pocketlearn.methods.base import (
    Batch,
    MemoryTraits,
    MethodConfig,
    TrainingMethod,
    check_finite,
    forward_loss,
    freeze,
)
from pocketlearn.methods.lora import base_problems, inject_lora, lora_parameters, lora_problems
from pocketlearn.quant import Base, quantize_base

Subset = Literal["all", "bias", "lora"]
History = list[tuple[int, float]]  # (seed, projected gradient), n_perturbations consecutive pairs per step


@dataclass(frozen=True)
class MezoConfig(MethodConfig):
    # the stable lr shrinks about as 1 / (number of perturbed parameters): 1e-2 trains a 2.4k-parameter MLP,
    # 1e-3 (the default) suits small models and SmolLM2's LoRA (3e-3 diverges there); OPT in the paper: 1e-6..1e-7
    lr: float = 1e-3
    eps: float = 1e-3  # perturbation scale ε
    weight_decay: float = 0.0  # on matrices only (not biases or norm weights), as in the paper's code
    subset: Subset = "all"  # what is perturbed and trained: every parameter, the biases, or LoRA adapters
    rank: int = 8  # LoRA rank for subset="lora"
    alpha: float = 16.0  # LoRA scale numerator for subset="lora" (adapters scaled by alpha / rank)
    seed: int = 0  # step seeds derive from (seed, step, perturbation); also seeds the LoRA init
    n_perturbations: int = 1  # SPSA estimates averaged per step (n-SPSA)
    # > 0: every step's seed is one of this many seeds drawn from pool_seed (FedKSeed's shared candidate seeds),
    # so a client's whole update is one coefficient per pool seed (see pool_coefficients)
    seed_pool: int = 0
    pool_seed: int = 0
    base: Base = "fp32"  # frozen weights stored fp32 or block-quantized (q4, q8); subset "lora" or "bias" only

    def problems(self) -> list[str]:
        out = super().problems()
        if self.eps <= 0:
            out.append(f"eps should be positive, got {self.eps}")
        if self.weight_decay < 0:
            out.append(f"weight_decay should be >= 0, got {self.weight_decay}")
        if self.subset not in ("all", "bias", "lora"):
            out.append(f"subset should be 'all', 'bias' or 'lora', got {self.subset!r}")
        if self.seed < 0:
            out.append(f"seed should be >= 0, got {self.seed}")
        if self.n_perturbations < 1:
            out.append(f"n_perturbations should be >= 1, got {self.n_perturbations}")
        if self.seed_pool < 0 or self.pool_seed < 0:
            out.append(f"seed_pool and pool_seed should be >= 0, got {self.seed_pool} and {self.pool_seed}")
        if self.base != "fp32" and self.subset == "all":
            out.append(f"base={self.base!r} keeps the weights quantized, so they cannot be perturbed: use "
                       "subset='lora' (or 'bias') with a quantized base, or base='fp32' with subset='all'")
        return out + lora_problems(self.rank, self.alpha) + base_problems(self.base)


class MeZO(TrainingMethod):
    """MeZO (Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", NeurIPS 2023).

    Memory-efficient zeroth-order SGD: SPSA gradient estimates with in-place, seed-regenerated perturbations.

    No autograd, no optimizer state, no copy of the weights: the only extra memory is the noise ``z`` of
    one parameter at a time. As in the paper's code the forward passes run in eval mode (no dropout), so
    l+ and l- see the same function. ``history`` keeps every (seed, projected gradient) pair.
    """

    name = "mezo"
    config: MezoConfig
    config_cls: ClassVar[type[MethodConfig]] = MezoConfig
    wire_kind = "zo"
    quality_rank = 70
    sends_seeds = True

    def prepare(self, model: nn.Module) -> nn.Module:
        self.history: History = []
        model.requires_grad_(False)
        quantize_base(model, self.config.base)
        if self.config.subset == "lora":
            with torch.random.fork_rng(devices=[]):  # the adapters' init depends on config.seed alone
                torch.manual_seed(self.config.seed)
                inject_lora(model, rank=self.config.rank, alpha=self.config.alpha)
        freeze(model)
        self.params = select_parameters(model, self.config.subset)
        return model

    def trainable_parameters(self) -> dict[str, Tensor]:
        return dict(self.params)

    def memory_traits(self) -> MemoryTraits:
        # activations of one layer at a time (no autograd); z of one parameter at a time
        return MemoryTraits("one_layer", gradient_bytes_per_param=0, optimizer_slots=0,
                            temporary_param_copies=1)

    def _update(self, batch: Batch) -> float:
        c = self.config
        seeds = step_seeds(c.seed, self.steps_done, c.n_perturbations, pool_seeds(c.pool_seed, c.seed_pool))
        with torch.no_grad(), _eval_mode(self.model):
            estimates = [self.estimate(batch, s) for s in seeds[:-1]]
            estimates.append(self._probe(batch, seeds[-1]))  # leaves θ - εz: the update pass restores it
            try:
                for _, loss in estimates:
                    check_finite(loss, self.name)  # before the update: the weights stay usable
            except BaseException:
                perturb(self.params, seeds[-1], c.eps)
                raise
            pairs = [(s, g) for s, (g, _) in zip(seeds, estimates, strict=True)]
            apply_update(self.params, pairs, c, restore=c.eps)
        self.history += pairs
        return sum(loss for _, loss in estimates) / len(estimates)

    @torch.no_grad()
    def estimate(self, batch: Batch, seed: int) -> tuple[float, float]:
        """Projected gradient g = (l+ - l-) / 2ε along z(seed), and the mean loss (l+ + l-) / 2.

        Leaves the parameters where they were, up to float round-off (a few ulp), even if a pass fails.
        """
        out = self._probe(batch, seed)
        perturb(self.params, seed, self.config.eps)
        return out

    def _probe(self, batch: Batch, seed: int) -> tuple[float, float]:
        """:meth:`estimate` without its last pass: leaves θ - εz (θ again, up to round-off, if a pass fails)."""
        eps, losses, offset = self.config.eps, [], 0.0
        try:
            for sign in (1.0, -1.0):  # θ + εz, then θ - εz
                perturb(self.params, seed, sign * eps - offset)
                offset = sign * eps
                losses.append(forward_loss(self.model, batch, self.loss_fn).item())
        except BaseException:
            if offset:
                perturb(self.params, seed, -offset)
            raise
        plus, minus = losses
        return (plus - minus) / (2 * eps), (plus + minus) / 2

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.history = [(int(s), float(g)) for s, g in state.get("history", [])]


def select_parameters(model: nn.Module, subset: Subset) -> dict[str, Tensor]:
    """Return the parameters ``subset`` names, sorted by name: the order z is drawn in."""
    if subset == "lora":
        chosen = lora_parameters(model)
        if not chosen:
            raise ConfigError("mezo: subset='lora' but the model has no LoRA adapters; build the method on "
                              "the plain model (it injects them) or pass a model that has them")
    elif subset == "bias":
        chosen = {n: p for n, p in model.named_parameters() if n.endswith("bias")}
        if not chosen:
            raise ConfigError("mezo: subset='bias' but the model has no biases; use subset='lora' or 'all'")
    else:
        chosen = dict(model.named_parameters())
    return dict(sorted(chosen.items()))


def step_seeds(seed: int, step: int, n: int, pool: Sequence[int] = ()) -> list[int]:
    """Return the ``n`` 32-bit seeds of step ``step`` (a pure function: a resumed run draws the same).

    With a ``pool``, each is one of the pool's seeds, picked by the same draw.
    """
    draws = [int(np.random.SeedSequence([seed, step, k]).generate_state(1)[0]) for k in range(n)]
    return [pool[d % len(pool)] for d in draws] if pool else draws


def pool_seeds(pool_seed: int, size: int) -> list[int]:
    """The ``size`` candidate step seeds of a pool (empty for size 0)."""
    return [int(s) for s in np.random.SeedSequence([pool_seed, 2**32]).generate_state(size)] if size else []


def pool_coefficients(history: Sequence[tuple[int, float]], pool: Sequence[int], n_perturbations: int = 1
                      ) -> Tensor:
    """A pooled history as one coefficient per pool seed: Σ g/n over the steps that used it.

    Without weight decay the update is -lr Σ_j c_j z(pool_j), linear in c: the sum of many clients' c is the
    sum of their updates (FedKSeed, Qin et al., ICML 2024).
    """
    index = {s: j for j, s in enumerate(pool)}
    c = torch.zeros(len(pool), dtype=torch.float64)
    for seed, g in history:
        if seed not in index:
            raise ConfigError(f"mezo: step seed {seed} is not in the seed pool; train with the same seed_pool "
                              "and pool_seed")
        c[index[seed]] += g / n_perturbations
    return c.float()


def expand_coefficients(like: Mapping[str, Tensor], c: Tensor, pool: Sequence[int], lr: float) -> dict[str, Tensor]:
    """The update -lr Σ_j c_j z(pool_j) of the tensors ``like`` (the perturbed ones, any order).

    ``c`` is (K,) for one client or (n, K) for n clients at once: each z is then drawn once for all of them.
    """
    names = sorted(like)
    rows = c.view(-1, len(pool)).to(torch.float32)  # (n, K)
    out = {n: torch.zeros(len(rows), *like[n].shape, dtype=like[n].dtype) for n in names}
    buffer = _buffer(like.values())
    for j, seed in enumerate(pool):
        if not rows[:, j].any():
            continue
        for i, n in enumerate(names):
            z = noise(like[n], seed, i, out=buffer).flatten()
            out[n].view(len(rows), -1).addr_(rows[:, j].to(z), z, alpha=-lr)
    return out if c.dim() == 2 else {n: t[0] for n, t in out.items()}


BLOCK = 1 << 17  # z is drawn in blocks of this many numbers, each from its own generator: blocks draw in parallel


def noise(like: Tensor, seed: int, index: int, *, out: Tensor | None = None) -> Tensor:
    """Draw z ~ N(0, I) shaped like ``like``, for parameter ``index`` of step seed ``seed``.

    Drawn on the CPU in fp32, in blocks of :data:`BLOCK` numbers, each from a generator keyed by (seed, index,
    block), on up to ``torch.get_num_threads()`` threads: z depends neither on the weights' device or dtype
    nor on the thread count, and any parameter's z can be regenerated alone. ``out``: a flat fp32 CPU buffer
    of at least ``like.numel()`` numbers to draw into (a pass over many parameters reuses one), else a new one.
    """
    n = like.numel()
    if out is not None and (out.dtype != torch.float32 or out.device.type != "cpu" or out.dim() != 1
                            or not out.is_contiguous() or out.numel() < n):
        raise ValueError(f"mezo.noise: out should be a flat contiguous fp32 CPU tensor of >= {n} numbers, got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device}; pass out=None to allocate one")
    flat = torch.empty(n) if out is None else out[:n]
    keys = _block_keys(seed, index, -(-n // BLOCK))
    blocks = [flat[k * BLOCK:(k + 1) * BLOCK] for k in range(len(keys))]

    def draw(k: int) -> None:
        blocks[k].normal_(generator=torch.Generator().manual_seed(keys[k]))

    workers = min(torch.get_num_threads(), len(blocks))
    if workers > 1:  # normal_ releases the GIL: the blocks fill in parallel
        for _ in _executor(workers).map(draw, range(len(blocks))):
            pass
    else:
        for k in range(len(blocks)):
            draw(k)
    return flat.view(like.shape).to(like.device, like.dtype)


@lru_cache(maxsize=4096)  # a step asks for each parameter's keys three times
def _block_keys(seed: int, index: int, blocks: int) -> tuple[int, ...]:
    """Unrelated keys for nearby (seed, index); block 0's is the key of a one-block z before z had blocks.

    torch seeds its CPU generator with a key's low 32 bits only: two blocks of one step coincide with
    probability ~ (blocks per step)² / 2³³ (1e-4 for SmolLM2's 135M parameters), harmless to the estimate.
    """
    return tuple(int(k) for k in np.random.SeedSequence([seed, index]).generate_state(blocks, np.uint64))


_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, executor)


def _executor(workers: int) -> ThreadPoolExecutor:
    """A thread pool of ``workers`` threads for this process (a forked child gets its own: threads do not fork)."""
    global _pool
    if _pool is None or _pool[:2] != (os.getpid(), workers):
        if _pool is not None and _pool[0] == os.getpid():
            _pool[2].shutdown(wait=False)
        _pool = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="mezo-noise"))
    return _pool[2]


def _buffer(tensors: Iterable[Tensor]) -> Tensor:
    """One fp32 buffer for the z of the largest tensor: a pass reuses it instead of allocating per parameter."""
    return torch.empty(max((t.numel() for t in tensors), default=0))


def perturb(params: Mapping[str, Tensor], seed: int, scale: float) -> None:
    """θ += scale · z(seed), in place, one parameter's z at a time."""
    buffer = _buffer(params.values())
    for i, p in enumerate(params.values()):
        p.add_(noise(p, seed, i, out=buffer), alpha=scale)


def apply_update(params: Mapping[str, Tensor], pairs: Sequence[tuple[int, float]], config: MezoConfig, *,
                 restore: float = 0.0, round_trip: bool = False) -> None:
    """Apply one step, θ -= lr (mean_k g_k z_k + wd θ) with decay on matrices only (trains and replays).

    ``restore``: the last pair's perturbation still on θ (training leaves θ - εz after its second forward
    pass), added back with the update's own draw of z. ``round_trip``: first repeat each pair's
    +εz -2εz +εz (replay). Either way each number sees the same float ops as in training, in the same
    order, so a replay matches training bit for bit; z is drawn once per parameter for the last pair.
    """
    if restore and round_trip:
        raise ValueError("mezo.apply_update: restore and round_trip exclude each other (training vs replay)")
    lr, eps, n = config.lr, config.eps, len(pairs)
    *rest, (last, g_last) = pairs
    buffer = _buffer(params.values())
    for i, p in enumerate(params.values()):
        if round_trip:
            for seed, _ in rest:
                _round_trip(p, noise(p, seed, i, out=buffer), eps)
        z = noise(p, last, i, out=buffer)
        if round_trip:
            _round_trip(p, z, eps)
        elif restore:
            p.add_(z, alpha=restore)
        if config.weight_decay and p.ndim >= 2:
            p.mul_(1 - lr * config.weight_decay)
        p.add_(z, alpha=-lr * g_last / n)
        for seed, g in rest:
            p.add_(noise(p, seed, i, out=buffer), alpha=-lr * g / n)


@torch.no_grad()
def replay(params: Mapping[str, Tensor] | nn.Module, history: Sequence[tuple[int, float]], config: MezoConfig,
           *, round_trip: bool = True) -> None:
    """Apply a MeZO ``history`` in place to another copy of the same starting weights.

    ``params``: a module (its ``config.subset`` parameters are used; for "lora" it must already carry the
    same adapters, e.g. built by ``MeZO`` with the same seed) or a dict holding exactly the trained tensors
    (the names of ``MeZO.trainable_parameters()``: z is drawn in their sorted order).
    ``round_trip`` repeats each perturbation's +εz, -2εz, +εz so that the result equals the trained weights
    bit for bit (same hardware and dtype); without it, only the updates are applied (a last-bit difference).
    """
    tensors = select_parameters(params, config.subset) if isinstance(params, nn.Module) else dict(
        sorted(params.items()))
    n = config.n_perturbations
    if len(history) % n:
        raise ConfigError(f"mezo replay: history has {len(history)} pairs, not a multiple of "
                          f"n_perturbations={n}; pass the config the history was trained with")
    for start in range(0, len(history), n):
        apply_update(tensors, history[start:start + n], config, round_trip=round_trip)


def _round_trip(p: Tensor, z: Tensor, eps: float) -> None:
    """Repeat the float ops :meth:`MeZO.estimate` does to ``p`` (θ + εz - 2εz + εz)."""
    for scale in (eps, -2 * eps, eps):
        p.add_(z, alpha=scale)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
