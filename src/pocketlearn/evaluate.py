"""Loss and accuracy of a model on held-out batches."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from pocketlearn.methods.base import Batch, LossFn, cross_entropy, logits_of
from pocketlearn.quant.model import lean_lm_scores

# At most this many logits at once (64 MiB of fp32): a language model's batch of 1,024 sequences over a
# 10,000-word vocabulary would otherwise hold ~1 GB of logits, and as much again for their log-softmax.
LOGITS_AT_ONCE = 1 << 24


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn = cross_entropy) -> dict[str, float]:
    """Mean loss and top-1 accuracy over all targets (tokens for LMs), weighted by count.

    Language models (logits over a sequence) also get top-3 accuracy, a keyboard's three suggestions, and
    perplexity.
    """
    was_training = model.training
    model.eval()
    total_loss, correct, top3, count, lm = 0.0, 0, 0, 0, False
    for inputs, targets in _bounded(model, batches):
        lean = lean_lm_scores(model, inputs, targets) if loss_fn is cross_entropy else None
        if lean is not None:  # a quantized tied head: no (tokens x vocabulary) logits
            keep = targets.reshape(-1) != -100
            losses, best = lean
            total_loss += float(losses[keep].sum())
            correct += int((best[:, 0] == targets.reshape(-1))[keep].sum())
            top3 += int((best == targets.reshape(-1, 1)).any(-1)[keep].sum())
            count, lm = count + int(keep.sum()), True
            continue
        logits = logits_of(model(inputs))
        n = int((targets != -100).sum())
        total_loss += loss_fn(logits, targets).item() * n
        correct += int((logits.argmax(-1) == targets).sum())
        if logits.dim() == 3 and logits.size(-1) >= 3:
            lm = True
            top3 += int((logits.topk(3, dim=-1).indices == targets.unsqueeze(-1)).any(-1).sum())
        count += n
    model.train(was_training)
    out = {"loss": total_loss / max(count, 1), "accuracy": correct / max(count, 1)}
    if lm:
        out |= {"top3": top3 / max(count, 1), "perplexity": math.exp(min(out["loss"], 50.0))}
    return out


def _bounded(model: nn.Module, batches: Iterable[Batch]) -> Iterator[Batch]:
    """The batches, each cut into pieces whose logits hold at most ``LOGITS_AT_ONCE`` numbers."""
    per_sample = 0
    for inputs, targets in batches:
        if not per_sample and len(inputs):
            per_sample = max(1, logits_of(model(inputs[:1])).numel())
        rows = max(1, LOGITS_AT_ONCE // max(per_sample, 1))
        for i in range(0, len(inputs), rows):
            yield inputs[i:i + rows], targets[i:i + rows]


def batches_of(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, seed: int | None = None) -> list[Batch]:
    """Split tensors into batches; shuffled when ``seed`` is given."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)) if seed is not None else None
    if order is not None:
        x, y = x[order], y[order]
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
