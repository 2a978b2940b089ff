"""Train many clients at once: one batched forward/backward over all clients' stacked weights.

Each client keeps its own copy of the weights (a leading K dimension); client k's loss only touches its own
slice, so one ``autograd.grad`` of the summed losses gives every client its own gradient. Clients come largest
first, and a client whose batches have run out leaves the step (the stack shrinks to the clients still
running), so a round computes the clients' real steps and no more; a short last batch is padded with samples
of weight 0. The result is the computation of K separate local loops (SGD, momentum, FedProx, AdamW), with
Python overhead paid once per step instead of once per client.

Plain stacks (Linear, Conv2d, pooling, activations, Flatten) run as batched matmuls and grouped convolutions
(channels last); other models go through ``torch.func.vmap``; models neither can batch (batch norm in training
mode, dropout) fall back to the sequential path of the engine.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pocketlearn.methods.base import Precision, autocast

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
    def run(p: Params, x: Tensor) -> Tensor:  # grouped x (B, K*C, H, W) -> one convolution of K*groups groups
        w = p[prefix + "weight"]  # (K, out, in/groups, kh, kw)
        bias = p.get(prefix + "bias")
        return F.conv2d(x, w.reshape(-1, *w.shape[2:]), None if bias is None else bias.reshape(-1), conv.stride,
                        conv.padding, conv.dilation, conv.groups * w.shape[0])

    return run


def to_grouped(x: Tensor) -> Tensor:
    """Stacked images (K, B, C, H, W) as one batch of K*C channels (B, K*C, H, W), channels last.

    In this layout the clients' convolutions are one grouped convolution, and ReLU and pooling apply as they
    are; channels-last memory makes the grouped convolution about 1.7x faster on CPU than the default layout,
    and max pooling 10x. A single channel's strides fit both layouts, and a convolution then picks the default
    one (a lone client's steps ran 1.7x slower), so they are set explicitly.
    """
    k, b = x.shape[:2]
    grouped = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:]).contiguous(memory_format=torch.channels_last)
    if grouped.shape[1] == 1:  # one channel (one client, grey images): set the strides that say channels last
        grouped = grouped.as_strided(grouped.shape, (grouped[0].numel(), 1, grouped.shape[3], 1))
    return grouped


def to_stacked(x: Tensor, k: int) -> Tensor:
    """Grouped (B, K*C, ...) back to stacked (K, B, C, ...)."""
    return x.reshape(x.shape[0], k, -1, *x.shape[2:]).transpose(0, 1)


@dataclass(frozen=True)
class _Step:
    """One layer of a stacked forward: ``run`` takes the layout ``grouped`` says (None: either layout)."""

    run: Callable[[Params, Tensor], Tensor]
    grouped: bool | None


def _step(prefix: str, module: nn.Module) -> _Step | None:
    if type(module) is nn.Linear:
        return _Step(_linear(prefix), grouped=False)
    if type(module) is nn.Conv2d and module.padding_mode == "zeros" and isinstance(module.padding, tuple):
        return _Step(_conv2d(prefix, module), grouped=True)
    if isinstance(module, _ELEMENTWISE):
        return _Step(lambda p, x: module(x), grouped=None)
    if isinstance(module, nn.MaxPool2d | nn.AvgPool2d | nn.AdaptiveAvgPool2d):
        return _Step(lambda p, x: module(x), grouped=True)  # per channel: the clients' channels stay apart
    if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
        return _Step(lambda p, x: x.reshape(*x.shape[:2], -1), grouped=False)
    if isinstance(module, nn.Dropout) and module.p == 0:
        return _Step(lambda p, x: x, grouped=None)
    return None


def batched_matmul_forward(model: nn.Module) -> StackedForward | None:
    """A stacked forward for ``nn.Sequential`` of plain layers, or None when the model has anything else.

    Linear layers run as batched matmuls on stacked activations (K, B, ...); convolutions and pooling on
    grouped ones (:func:`to_grouped`), and the activations change layout only where the layer kind does.
    """
    if type(model) is not nn.Sequential:
        return None
    children = _pool_before_relu(list(model.named_children()))
    layers = [_step(f"{name}.", m) for name, m in children]
    if any(f is None for f in layers):
        return None
    steps = [f for f in layers if f is not None]

    def forward(params: Params, x: Tensor) -> Tensor:
        k, grouped = x.shape[0], False
        for step in steps:
            if step.grouped is not None and step.grouped != grouped:
                x = to_grouped(x) if step.grouped else to_stacked(x, k)
                grouped = step.grouped
            x = step.run(params, x)
        return to_stacked(x, k) if grouped else x

    return forward


def _pool_before_relu(children: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """ReLU then max-pooling, run as max-pooling then ReLU.

    Both keep the largest input, so values and gradients are the same, and the ReLU sees a quarter of the elements.
    """
    out = list(children)
    for i in range(len(out) - 1):
        if type(out[i][1]) is nn.ReLU and type(out[i + 1][1]) is nn.MaxPool2d:
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def _functional(model: nn.Module) -> bool:
    """Whether every client's forward is a pure function of its weights (no batch statistics, no dropout)."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) or (isinstance(m, nn.Dropout) and m.p)
                   for m in model.modules())


def _logits(out: object) -> Tensor:
    return out.logits if hasattr(out, "logits") else out  # type: ignore[union-attr,return-value]


def vmap_forward(model: nn.Module) -> StackedForward | None:
    """A stacked forward through ``torch.func.vmap``; None for models it cannot batch."""
    if not _functional(model):
        return None
    from torch.func import functional_call, vmap

    buffers = dict(model.named_buffers())
    batched = vmap(lambda params, x: _logits(functional_call(model, (params, buffers), (x,))))

    def forward(params: Params, x: Tensor) -> Tensor:
        with warnings.catch_warnings():  # ops without a batching rule fall back to a loop: slower, still right
            warnings.filterwarnings("ignore", message=".*performance drop.*")
            return batched(params, x)

    return forward


def looped_forward(model: nn.Module) -> StackedForward | None:
    """Each client's forward in turn on its own rows of the stack, one backward for all.

    Plain kernels (a linear layer's bias fused into its matmul, attention's own kernel) where ``vmap`` has none;
    for a next-word transformer on 2 cores, one client at a time this way beats vmap's by ~10%.
    """
    if not _functional(model):
        return None
    from torch.func import functional_call

    buffers = dict(model.named_buffers())

    def forward(params: Params, x: Tensor) -> Tensor:
        return torch.stack([_logits(functional_call(model, ({n: p[k] for n, p in params.items()}, buffers), (x[k],)))
                            for k in range(len(x))])

    return forward


def stacked_forwards(model: nn.Module) -> dict[str, StackedForward]:
    """The ways this model's clients can be stacked, by name (none: they train one at a time)."""
    candidates = {"batched matmul/conv": batched_matmul_forward(model), "torch.func.vmap": vmap_forward(model),
                  "one client after another": looped_forward(model)}
    return {name: f for name, f in candidates.items() if f is not None}


@dataclass
class PaddedBatches:
    """All clients' batches for a round: sample (k, s, b) is row ``index[k, s, b]``, weighing ``w[k, s, b]``.

    ``w`` is 1/(size of that batch) for real samples and 0 for padding, so a weighted sum is each batch's mean.
    Clients come largest first (non-increasing ``steps``), so those with a batch left at step s are the first
    ``running[s]``: a step runs on a prefix of the stack, and a client that has finished costs nothing. A step's
    samples are gathered when it runs (:meth:`batch`), so a round never holds its clients padded to the longest.
    """

    x: Tensor  # the samples (N, ...) the index points into
    y: Tensor  # their targets (N, ...)
    index: Tensor  # (K, S, B)
    w: Tensor  # (K, S, B)
    steps: Tensor  # (K,) real steps per client, non-increasing

    def __post_init__(self) -> None:
        if bool((self.steps[1:] > self.steps[:-1]).any()):
            raise ValueError("clients must come largest first (non-increasing steps); sort them with largest_first")

    @property
    def num_clients(self) -> int:
        return self.index.shape[0]

    @property
    def running(self) -> list[int]:
        """How many clients take step s, for each step."""
        return [int((self.steps > s).sum()) for s in range(self.index.shape[1])]

    def batch(self, s: int, n: int) -> tuple[Tensor, Tensor]:
        """Step ``s`` of the first ``n`` clients: inputs (n, B, ...) and targets (n, B, ...)."""
        rows = self.index[:n, s]
        return self.x[rows], self.y[rows]


def largest_first(sizes: np.ndarray) -> np.ndarray:
    """The permutation that puts clients in decreasing size (stable), as :class:`PaddedBatches` needs them."""
    return np.argsort(-sizes, kind="stable")


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
    """The clients' batches (see :class:`PaddedBatches`); sequence targets weigh each batch's tokens alike.

    A language model's batch loss is the mean over its targets that are not -100 (``cross_entropy``'s
    ``ignore_index``), as the per-client loop computes it: each sample then weighs 1/(the batch's counted tokens).
    """
    index, weight, steps = batch_positions(orders, batch_size)
    rows, w = torch.from_numpy(index), torch.from_numpy(weight)
    if y.dim() > 1:  # (N, T): token targets
        tokens = (y != -100).flatten(1).sum(1)  # counted targets per sample
        counted = (tokens[rows] * (w > 0)).sum(2, keepdim=True)  # (K, S, 1)
        w = torch.where(w > 0, 1.0 / counted.clamp_min(1), 0.0)
    return PaddedBatches(x, y, rows, w, torch.from_numpy(steps))


def per_sample_loss(out: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy per sample (K, B); a sequence's is summed over its positions (-100 targets count nothing)."""
    k, b = y.shape[:2]
    logits, targets = out.reshape(-1, out.shape[-1]), y.reshape(-1)
    if logits.shape[-1] >= WIDE_VOCABULARY:
        ce = _WideCrossEntropy.apply(logits, targets)
    else:
        ce = F.cross_entropy(logits, targets, reduction="none")
    return ce.reshape(k, b, -1).sum(2)


WIDE_VOCABULARY = 1024  # classes from which log_softmax's own kernels cost more than the fused loss below


class _WideCrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(reduction="none", ignore_index=-100)`` in fewer passes over (N, C) logits.

    A next-word model's loss over 10,000 words took a quarter of its step: log_softmax and its backward read and
    write the logits several times. Here the forward keeps exp(logits - max) for the backward, which scales it in
    place: softmax minus one-hot, per row, is the whole gradient. Same values up to float rounding (a test).
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor) -> Tensor:
        top = logits.amax(-1, keepdim=True)
        exp = torch.sub(logits, top).exp_()
        total = exp.sum(-1, keepdim=True)
        counted = targets != -100
        picked = targets.clamp_min(0).unsqueeze(-1)
        ctx.save_for_backward(exp, total, picked, counted)
        ctx.used = False
        return ((total.log() + top - logits.gather(-1, picked)).squeeze(-1)) * counted

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        if ctx.used:  # the saved exponentials became the gradient
            raise RuntimeError("the wide-vocabulary cross-entropy's graph can be differentiated once")
        ctx.used = True
        exp, total, picked, counted = ctx.saved_tensors
        g = (grad * counted).unsqueeze(-1)
        return exp.mul_(g / total).scatter_add_(-1, picked, -g), None


@dataclass(frozen=True)
class LocalOptimizer:
    """Each client's optimizer, as the per-client loop builds it (``torch.optim.SGD`` or ``AdamW``).

    ``proximal_mu``: FedProx's pull towards the round's global weights, added to the gradient.
    """

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    kind: Literal["sgd", "adamw"] = "sgd"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    @property
    def plain(self) -> bool:
        """SGD without momentum, decay or pull: the update is the gradient times the learning rate."""
        return self.kind == "sgd" and not (self.momentum or self.weight_decay or self.proximal_mu)

    def slots(self, tensors: list[Tensor]) -> list[list[Tensor]]:
        """Per-client state: a momentum buffer (SGD with momentum) or Adam's two moments per tensor."""
        count = 2 if self.kind == "adamw" else int(self.momentum > 0)
        return [[torch.zeros_like(t) for t in tensors] for _ in range(count)]

    @torch.no_grad()
    def step(self, views: list[Tensor], grads: list[Tensor], state: list[list[Tensor]], start: list[Tensor],
             step: int) -> None:
        """Step the ``n`` running clients (``views`` are the first n rows); every one of them takes its ``step``-th."""
        if self.plain:
            torch._foreach_add_(views, grads, alpha=-self.lr)
            return
        n = len(views[0])
        grads = list(grads)
        if self.proximal_mu:
            torch._foreach_add_(grads, [v - s for v, s in zip(views, start, strict=True)], alpha=self.proximal_mu)
        if self.kind == "adamw":
            self._adamw(views, grads, [[t[:n] for t in slot] for slot in state], step + 1)
            return
        if self.weight_decay:
            torch._foreach_add_(grads, views, alpha=self.weight_decay)
        if self.momentum:
            buffers = [t[:n] for t in state[0]]
            torch._foreach_mul_(buffers, self.momentum)
            torch._foreach_add_(buffers, grads)
            grads = buffers
        torch._foreach_add_(views, grads, alpha=-self.lr)

    def _adamw(self, views: list[Tensor], grads: list[Tensor], moments: list[list[Tensor]], t: int) -> None:
        """AdamW as ``torch.optim.AdamW`` computes it; all running clients are at their ``t``-th step."""
        (b1, b2), (m, v) = self.betas, moments
        if self.weight_decay:
            torch._foreach_mul_(views, 1 - self.lr * self.weight_decay)
        torch._foreach_lerp_(m, grads, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - b2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, math.sqrt(1 - b2**t))
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(views, m, denom, value=-self.lr / (1 - b1**t))


def stacked_copies(start: Params, k: int) -> Params:
    """K copies of each tensor, as leaves that autograd differentiates (reuse them across rounds)."""
    return {n: p.detach().unsqueeze(0).repeat(k, *([1] * p.dim())).requires_grad_() for n, p in start.items()}


def _reset(stack: Params | None, start: Params, k: int) -> Params:
    """``stack`` (or a new one) holding K copies of ``start``."""
    if stack is None:
        return stacked_copies(start, k)
    with torch.no_grad():
        for n, t in stack.items():
            t.copy_(start[n].unsqueeze(0).expand_as(t))
    return stack


def train_stacked(forward: StackedForward, start: Params, data: PaddedBatches, opt: LocalOptimizer,
                  stack: Params | None = None, precision: Precision = "fp32") -> tuple[Params, Tensor]:
    """Run every client's local training at once from the global ``start``; return (K-stacked params, mean losses).

    ``stack`` (from :func:`stacked_copies`) is overwritten and returned, so a round allocates no weights.
    The losses are each client's mean training loss over its steps, measured before each update.
    ``precision`` "bf16" runs the forward (and so the backward) in bfloat16 autocast; weights, losses,
    gradients and the optimizer stay fp32.
    """
    k = data.num_clients
    stack = _reset(stack, start, k)
    names, tensors = list(stack), list(stack.values())
    loss_sum = torch.zeros(k)
    state = opt.slots(tensors)
    origin = [start[n] for n in names]
    for s, n in enumerate(data.running):
        views = tensors if n == k else [t[:n] for t in tensors]  # the clients with a batch left: a prefix
        x, y = data.batch(s, n)
        with autocast(precision):
            out = forward(dict(zip(names, views, strict=True)), x)
        per = per_sample_loss(out.float(), y) * data.w[:n, s]  # (n, B)
        grads = torch.autograd.grad(per.sum(), views)
        with torch.no_grad():
            loss_sum[:n] += per.detach().sum(1)
        opt.step(views, list(grads), state, origin, s)
    return {n: t.detach() for n, t in stack.items()}, loss_sum / data.steps.clamp_min(1)


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
                      stack: Params, deltas: Params) -> tuple[Params, Tensor]:
    """:func:`train_stacked` for plain SGD on an MLP classifier, with the backward pass written out.

    Returns each client's change of the weights (K-stacked, in ``deltas``) and mean losses. Autograd's
    bookkeeping costs more than the arithmetic at these sizes; the gradients are the same (softmax minus one-hot,
    weighted per sample, through batched matmuls), up to float rounding. Every client starts from ``start``, so
    step 0 runs through the shared weights (one matmul for all clients) and writes -lr x each client's gradient
    straight into its delta: the clients' own copies of the weights (``stack``) are made only for those that take
    a second step. ``stack`` and ``deltas`` (K-stacked, as :func:`stacked_copies` makes them) are overwritten.
    """
    k = data.num_clients
    first_linear = next(i for i, layer in enumerate(layers) if layer.kind == "linear")
    loss_sum = torch.zeros(k)
    minus_one = torch.full((k, data.index.shape[2], 1), -1.0)  # (K, B, 1): subtracts the one-hot
    running = data.running
    again = running[1] if len(running) > 1 else 0  # the clients that take a second step
    for s, n in enumerate(running):
        weights = start if s == 0 else {name: t[:n] for name, t in stack.items()}
        h, y = data.batch(s, n)
        saved: list[Tensor] = []
        for layer in layers:
            saved.append(h)
            if layer.kind == "linear":
                if s == 0:  # the shared start: one matmul for all clients
                    h = F.linear(h, start[layer.prefix + "weight"], start.get(layer.prefix + "bias"))
                else:
                    h = _linear(layer.prefix)(weights, h)
            elif layer.kind == "relu":
                h = h.clamp_min(0)
                saved[-1] = h  # the mask comes from the output
            else:
                h = h.reshape(n, h.shape[1], -1)
        log_p = torch.log_softmax(h, -1)  # (n, B, C)
        target = y.unsqueeze(-1)
        w = data.w[:n, s]
        loss_sum[:n].sub_(torch.bmm(w.unsqueeze(1), log_p.gather(-1, target)).view(n))  # weighted mean NLL
        g = log_p.exp_().scatter_add_(-1, target, minus_one[:n]).mul_(w.unsqueeze(-1))
        tensors, grads = [], []
        for i in range(len(layers) - 1, first_linear - 1, -1):
            layer, a = layers[i], saved[i]
            if layer.kind == "linear":
                weight = weights[layer.prefix + "weight"]
                names = [layer.prefix + "weight"] + ([layer.prefix + "bias"] if layer.bias else [])
                if s == 0:
                    _first_step(names, g, a, start, lr, stack, deltas, again)
                else:
                    tensors += [stack[name][:n] for name in names]
                    grads += [torch.bmm(g.transpose(1, 2), a)] + ([g.sum(1)] if layer.bias else [])
                if i > first_linear:
                    g = torch.matmul(g, weight)
            elif layer.kind == "relu":
                g = torch.ops.aten.threshold_backward(g, a, 0)  # zero where the ReLU was off
            else:
                g = g.reshape(a.shape)
        if tensors:
            torch._foreach_add_(tensors, grads, alpha=-lr)
    trained = running[0] if running else 0
    for name, t in stack.items():
        if again:  # the clients that took more than one step: their weights less the start
            torch.sub(t[:again], start[name], out=deltas[name][:again])
        if trained < k:  # clients without a sample: no change
            deltas[name][trained:].zero_()
    return deltas, loss_sum / data.steps.clamp_min(1)


def _first_step(names: list[str], g: Tensor, a: Tensor, start: Params, lr: float, stack: Params, deltas: Params,
                again: int) -> None:
    """A linear layer's SGD step from the shared start: into the weights of clients who step again, else the deltas.

    The first ``again`` clients step again. ``g`` (K, B, out) is the loss's gradient at the output, ``a`` the input.
    """
    g_t, n = g.transpose(1, 2), len(g)
    weight, bias = names[0], names[1] if len(names) > 1 else None
    if again:
        torch.baddbmm(start[weight], g_t[:again], a[:again], alpha=-lr, out=stack[weight][:again])
    if again < n:
        deltas[weight][again:n].baddbmm_(g_t[again:], a[again:], beta=0, alpha=-lr)
    if bias is not None:
        b_grad = g.sum(1)
        if again:
            torch.add(start[bias], b_grad[:again], alpha=-lr, out=stack[bias][:again])
        if again < n:
            torch.mul(b_grad[again:], -lr, out=deltas[bias][again:n])

