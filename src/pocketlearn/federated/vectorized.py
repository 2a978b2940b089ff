"""Train many clients at once: one batched forward/backward over all clients' stacked weights.

Each client keeps its own copy of the weights (a leading K dimension); client k's loss only touches its own
slice, so one ``autograd.grad`` of the summed losses gives every client its own gradient. Clients with fewer
samples are padded: a padded sample has weight 0, and a client whose batches have run out gets a zero
gradient and no update. The result is the computation of K separate SGD loops, with Python overhead paid once
per step instead of once per client.

Plain stacks (Linear, Conv2d, pooling, activations, Flatten) run as batched matmuls and grouped convolutions;
other models go through ``torch.func.vmap``; models neither can batch (batch norm in training mode, dropout)
fall back to the sequential path of the engine.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

Params = dict[str, Tensor]
StackedForward = Callable[[Params, Tensor], Tensor]  # (params (K, ...), x (K, B, ...)) -> output (K, B, ...)

_ELEMENTWISE: tuple[type[nn.Module], ...] = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.LeakyReLU,
                                             nn.Identity, nn.ELU)


def _linear(prefix: str) -> Callable[[Params, Tensor], Tensor]:
    def run(p: Params, x: Tensor) -> Tensor:  # x (K, B, in)
        w = p[prefix + "weight"]  # (K, out, in)
        b = p.get(prefix + "bias")
        if b is None:
            return torch.bmm(x, w.transpose(1, 2))
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))

    return run


def _conv2d(prefix: str, conv: nn.Conv2d) -> Callable[[Params, Tensor], Tensor]:
    def run(p: Params, x: Tensor) -> Tensor:  # x (K, B, C, H, W) -> one grouped conv over K*groups groups
        k, b = x.shape[:2]
        w = p[prefix + "weight"]  # (K, out, in/groups, kh, kw)
        bias = p.get(prefix + "bias")
        y = F.conv2d(x.transpose(0, 1).reshape(b, -1, *x.shape[3:]), w.reshape(-1, *w.shape[2:]),
                     None if bias is None else bias.reshape(-1), conv.stride, conv.padding, conv.dilation,
                     conv.groups * k)
        return y.reshape(b, k, -1, *y.shape[2:]).transpose(0, 1)

    return run


def _per_example(module: nn.Module) -> Callable[[Params, Tensor], Tensor]:
    def run(p: Params, x: Tensor) -> Tensor:  # a parameter-free layer applied to (K*B, ...)
        y = module(x.reshape(-1, *x.shape[2:]))
        return y.reshape(*x.shape[:2], *y.shape[1:])

    return run


def _layer(prefix: str, module: nn.Module) -> Callable[[Params, Tensor], Tensor] | None:
    if type(module) is nn.Linear:
        return _linear(prefix)
    if type(module) is nn.Conv2d and module.padding_mode == "zeros" and isinstance(module.padding, tuple):
        return _conv2d(prefix, module)
    if isinstance(module, _ELEMENTWISE):
        return lambda p, x: module(x)
    if isinstance(module, nn.MaxPool2d | nn.AvgPool2d | nn.AdaptiveAvgPool2d | nn.Flatten):
        if isinstance(module, nn.Flatten) and (module.start_dim != 1 or module.end_dim != -1):
            return None
        return _per_example(module)
    if isinstance(module, nn.Dropout) and module.p == 0:
        return lambda p, x: x
    return None


def batched_matmul_forward(model: nn.Module) -> StackedForward | None:
    """A stacked forward for ``nn.Sequential`` of plain layers, or None when the model has anything else."""
    if type(model) is not nn.Sequential:
        return None
    layers = [_layer(f"{name}.", m) for name, m in model.named_children()]
    if any(f is None for f in layers):
        return None
    steps = [f for f in layers if f is not None]

    def forward(params: Params, x: Tensor) -> Tensor:
        for f in steps:
            x = f(params, x)
        return x

    return forward


def vmap_forward(model: nn.Module) -> StackedForward | None:
    """A stacked forward through ``torch.func.vmap``; None for models it cannot batch."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm | nn.Dropout) and (not isinstance(m, nn.Dropout) or m.p)
           for m in model.modules()):
        return None
    from torch.func import functional_call, vmap

    buffers = dict(model.named_buffers())

    def one(params: Params, x: Tensor) -> Tensor:
        out = functional_call(model, (params, buffers), (x,))
        return out.logits if hasattr(out, "logits") else out

    batched = vmap(one)

    def forward(params: Params, x: Tensor) -> Tensor:
        with warnings.catch_warnings():  # ops without a batching rule fall back to a loop: slower, still right
            warnings.filterwarnings("ignore", message=".*performance drop.*")
            return batched(params, x)

    return forward


def stacked_forward(model: nn.Module) -> StackedForward | None:
    return batched_matmul_forward(model) or vmap_forward(model)


@dataclass
class PaddedBatches:
    """All clients' batches for a round, padded: sample (k, s, b) is ``x[k, s, b]`` with weight ``w[k, s, b]``.

    ``w`` is 1/(size of that batch) for real samples and 0 for padding, so a weighted sum is each batch's mean.
    """

    x: Tensor  # (K, S, B, ...)
    y: Tensor  # (K, S, B, ...)
    w: Tensor  # (K, S, B)
    steps: Tensor  # (K,) real steps per client

    @property
    def active(self) -> Tensor:  # (K, S) does client k take step s
        return self.w.sum(2) > 0


def batch_positions(orders: Sequence[np.ndarray], batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lay out each client's visiting order as padded steps; a batch never spans two epochs.

    ``orders[k]`` is (epochs, n_k): client k's sample indices in visiting order, one row per epoch.
    Returns index (K, S, B), weight (K, S, B) and real steps (K,).
    """
    batch_size = min(batch_size, max(o.shape[1] for o in orders))  # no padding wider than the largest client
    steps = np.array([o.shape[0] * -(-o.shape[1] // batch_size) for o in orders], dtype=np.int64)
    k, s = len(orders), int(steps.max())
    index = np.zeros((k, s, batch_size), dtype=np.int64)
    weight = np.zeros((k, s, batch_size), dtype=np.float32)
    for c, order in enumerate(orders):
        epochs, n = order.shape
        per_epoch = -(-n // batch_size)
        padded = np.zeros((epochs, per_epoch * batch_size), dtype=np.int64)
        padded[:, :n] = order
        index[c, : epochs * per_epoch] = padded.reshape(epochs * per_epoch, batch_size)
        sizes = np.full(per_epoch, batch_size, dtype=np.float32)
        sizes[-1] = n - (per_epoch - 1) * batch_size
        mask = np.zeros(per_epoch * batch_size, dtype=np.float32)
        mask[:n] = 1.0
        w = (mask.reshape(per_epoch, batch_size) / sizes[:, None])
        weight[c, : epochs * per_epoch] = np.tile(w, (epochs, 1))
    return index, weight, steps


def pad_batches(x: Tensor, y: Tensor, orders: Sequence[np.ndarray], batch_size: int) -> PaddedBatches:
    index, weight, steps = batch_positions(orders, batch_size)
    flat = torch.from_numpy(index.reshape(-1))
    shape = index.shape
    return PaddedBatches(x[flat].reshape(*shape, *x.shape[1:]), y[flat].reshape(*shape, *y.shape[1:]),
                         torch.from_numpy(weight), torch.from_numpy(steps))


def per_sample_loss(out: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy per sample (K, B); sequence outputs are averaged over their positions."""
    k, b = y.shape[:2]
    ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none")
    return ce.reshape(k, b, -1).mean(2)


@dataclass(frozen=True)
class SGDConfig:
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0  # FedProx: pull towards the round's global weights


def stacked_copies(start: Params, k: int) -> Params:
    """K copies of each tensor, as leaves that autograd differentiates (reuse them across rounds)."""
    return {n: p.detach().unsqueeze(0).repeat(k, *([1] * p.dim())).requires_grad_() for n, p in start.items()}


def train_stacked(forward: StackedForward, start: Params, data: PaddedBatches, sgd: SGDConfig,
                  stack: Params | None = None) -> tuple[Params, Tensor]:
    """Run every client's local SGD at once from the global ``start``; return (K-stacked params, mean losses).

    ``stack`` (from :func:`stacked_copies`) is overwritten and returned, so a round allocates no weights.
    The losses are each client's mean training loss over its steps, measured before each update.
    """
    k = data.x.shape[0]
    if stack is None:
        stack = stacked_copies(start, k)
    else:
        with torch.no_grad():
            for n, t in stack.items():
                t.copy_(start[n].unsqueeze(0).expand_as(t))
    tensors = list(stack.values())
    loss_sum = torch.zeros(k)
    plain = not (sgd.momentum or sgd.weight_decay or sgd.proximal_mu)
    buffers = [torch.zeros_like(t) for t in tensors] if sgd.momentum else []
    for s in range(data.x.shape[1]):
        per = per_sample_loss(forward(stack, data.x[:, s]), data.y[:, s]) * data.w[:, s]  # (K, B)
        grads = torch.autograd.grad(per.sum(), tensors)
        with torch.no_grad():
            loss_sum += per.detach().sum(1)
            if plain:  # an idle client's gradient is exactly zero: no masking needed
                torch._foreach_add_(tensors, grads, alpha=-sgd.lr)
            else:
                _masked_step(tensors, list(grads), buffers, [start[n] for n in stack], data.active[:, s], sgd)
    return {n: t.detach() for n, t in stack.items()}, loss_sum / data.steps.clamp_min(1)


def _masked_step(tensors: list[Tensor], grads: list[Tensor], buffers: list[Tensor], start: list[Tensor],
                 active: Tensor, sgd: SGDConfig) -> None:
    """SGD with momentum / weight decay / proximal term; clients without a batch this step stay put."""
    for i, (t, g) in enumerate(zip(tensors, grads, strict=True)):
        on = active.to(t.dtype).view(-1, *([1] * (t.dim() - 1)))
        if sgd.weight_decay:
            g = g.add(t, alpha=sgd.weight_decay)
        if sgd.proximal_mu:
            g = g.add(t - start[i], alpha=sgd.proximal_mu)
        g = g * on
        if sgd.momentum:  # an idle client keeps its buffer and takes no step
            buffers[i].mul_(1 - (1 - sgd.momentum) * on).add_(g)
            g = buffers[i] * on
        t.sub_(g, alpha=sgd.lr)
