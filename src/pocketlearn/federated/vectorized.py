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
    Returns index (K, S, B), weight (K, S, B) and real steps (K,). One pass of array ops for all clients.
    """
    sizes = np.array([o.shape[1] for o in orders])
    epochs = orders[0].shape[0]
    batch_size = min(batch_size, int(sizes.max()))  # no padding wider than the largest client
    per_epoch = -(-sizes // batch_size)  # steps per epoch, (K,)
    steps = epochs * per_epoch
    flat = np.concatenate([o.reshape(-1) for o in orders])
    client = np.repeat(np.arange(len(orders)), epochs * sizes)
    within = np.arange(len(flat)) - np.repeat(np.cumsum(epochs * sizes) - epochs * sizes, epochs * sizes)
    epoch, j = within // sizes[client], within % sizes[client]
    step = epoch * per_epoch[client] + j // batch_size
    slot = j % batch_size
    index = np.zeros((len(orders), int(steps.max()), batch_size), dtype=np.int64)
    weight = np.zeros(index.shape, dtype=np.float32)
    index[client, step, slot] = flat
    in_batch = np.minimum(batch_size, sizes[client] - (j // batch_size) * batch_size)  # size of that batch
    weight[client, step, slot] = 1.0 / in_batch
    return index, weight, steps.astype(np.int64)


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
    active = data.active
    for s in range(data.x.shape[1]):
        rows = None if bool(active[:, s].all()) else active[:, s].nonzero().squeeze(1)
        if rows is None:
            per = per_sample_loss(forward(stack, data.x[:, s]), data.y[:, s]) * data.w[:, s]  # (K, B)
        else:  # clients of unequal size: only those with a batch left run the model (padding cost half a round)
            sub = {n: t[rows] for n, t in stack.items()}
            per = per_sample_loss(forward(sub, data.x[rows, s]), data.y[rows, s]) * data.w[rows, s]
        grads = torch.autograd.grad(per.sum(), tensors)  # an idle client's rows are zero
        with torch.no_grad():
            if rows is None:
                loss_sum += per.detach().sum(1)
            else:
                loss_sum.index_add_(0, rows, per.detach().sum(1))
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


@dataclass(frozen=True)
class _MLPLayer:
    kind: str  # "linear" | "relu" | "flatten"
    prefix: str = ""
    bias: bool = True


def mlp_layers(model: nn.Module) -> list[_MLPLayer] | None:
    """The layers of an ``nn.Sequential`` MLP (Linear, ReLU, Flatten), or None for anything else."""
    if type(model) is not nn.Sequential:
        return None
    layers = []
    for name, m in model.named_children():
        if type(m) is nn.Linear:
            layers.append(_MLPLayer("linear", f"{name}.", m.bias is not None))
        elif type(m) is nn.ReLU:
            layers.append(_MLPLayer("relu"))
        elif type(m) is nn.Flatten and m.start_dim == 1 and m.end_dim == -1:
            layers.append(_MLPLayer("flatten"))
        elif not (type(m) is nn.Identity or (type(m) is nn.Dropout and m.p == 0)):
            return None
    return layers if any(layer.kind == "linear" for layer in layers) else None


@torch.no_grad()
def train_stacked_mlp(layers: list[_MLPLayer], start: Params, data: PaddedBatches, lr: float,
                      stack: Params | None = None) -> tuple[Params, Tensor]:
    """:func:`train_stacked` for plain SGD on an MLP classifier, with the backward pass written out.

    Autograd's bookkeeping costs more than the arithmetic at these sizes; the gradients are the same
    (softmax minus one-hot, weighted per sample, through batched matmuls), up to float rounding.
    """
    k = data.x.shape[0]
    if stack is None:
        stack = stacked_copies(start, k)
    for n, t in stack.items():
        t.copy_(start[n].unsqueeze(0).expand_as(t))
    first_linear = next(i for i, layer in enumerate(layers) if layer.kind == "linear")
    loss_sum = torch.zeros(k)
    minus_one = torch.full((*data.y.shape[::2], 1), -1.0)  # (K, B, 1): subtracts the one-hot
    for s in range(data.x.shape[1]):
        h, saved = data.x[:, s], []
        for layer in layers:
            saved.append(h)
            if layer.kind == "linear":
                h = _linear(layer.prefix)(stack, h)
            elif layer.kind == "relu":
                h = h.clamp_min(0)
                saved[-1] = h  # the mask comes from the output
            else:
                h = h.reshape(k, h.shape[1], -1)
        log_p = torch.log_softmax(h, -1)  # (K, B, C)
        target = data.y[:, s].unsqueeze(-1)
        w = data.w[:, s]
        loss_sum.sub_(torch.bmm(w.unsqueeze(1), log_p.gather(-1, target)).view(k))  # weighted mean NLL
        g = log_p.exp_().scatter_add_(-1, target, minus_one).mul_(w.unsqueeze(-1))
        tensors, grads = [], []
        for i in range(len(layers) - 1, first_linear - 1, -1):
            layer, a = layers[i], saved[i]
            if layer.kind == "linear":
                weight = stack[layer.prefix + "weight"]
                tensors.append(weight)
                grads.append(torch.bmm(g.transpose(1, 2), a))
                if layer.bias:
                    tensors.append(stack[layer.prefix + "bias"])
                    grads.append(g.sum(1))
                if i > first_linear:
                    g = torch.bmm(g, weight)
            elif layer.kind == "relu":
                g = torch.ops.aten.threshold_backward(g, a, 0)  # zero where the ReLU was off
            else:
                g = g.reshape(a.shape)
        torch._foreach_add_(tensors, grads, alpha=-lr)
    return {n: t.detach() for n, t in stack.items()}, loss_sum / data.steps.clamp_min(1)
