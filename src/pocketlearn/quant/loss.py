"""Cross-entropy over a large vocabulary without the (tokens × vocabulary) logits.

Gemma's 262,144-word vocabulary makes a batch of 4 × 128 tokens' logits 537 MB in fp32. The forward pass
walks the vocabulary in chunks keeping a running log-sum-exp per token; backward walks it again, adding
each chunk's softmax times its (dequantized) rows to the hidden states' gradient. Only one chunk's weights
and logits exist at a time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from pocketlearn.quant.blocks import QuantizedMatrix

IGNORE = -100  # targets with this value are left out, as in ``F.cross_entropy``


def softcapped(logits: Tensor, cap: float | None) -> Tensor:
    return logits if cap is None else torch.tanh(logits / cap) * cap


def chunk_logits(hidden: Tensor, table: QuantizedMatrix, start: int, stop: int, cap: float | None) -> Tensor:
    """Logits of the words ``start:stop`` for every position of ``hidden`` (..., H)."""
    return softcapped(hidden @ table.dequantize(slice(start, stop)).T, cap)


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: Tensor, targets: Tensor, table: QuantizedMatrix, chunk: int,
                cap: float | None) -> Tensor:
        keep = targets != IGNORE
        safe = torch.where(keep, targets, 0)
        lse = _logsumexp(hidden, table, chunk, cap)
        raw_target = (hidden * table.dequantize(safe)).sum(-1)
        losses = (lse - softcapped(raw_target, cap)) * keep
        count = keep.sum().clamp_min(1)
        ctx.save_for_backward(hidden, safe, keep, lse, raw_target)
        ctx.table, ctx.chunk, ctx.cap, ctx.count = table, chunk, cap, count
        return losses.sum() / count

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        hidden, safe, keep, lse, raw_target = ctx.saved_tensors
        table, chunk, cap = ctx.table, ctx.chunk, ctx.cap
        weight = (keep * (grad / ctx.count)).unsqueeze(-1)  # (N, 1): d loss / d (token's loss)
        grad_hidden = torch.zeros_like(hidden)
        for v in range(0, table.rows, chunk):
            rows = table.dequantize(slice(v, min(v + chunk, table.rows)))
            p = _softmax_slope(hidden @ rows.T, lse, cap)  # in place: one chunk of logits at a time
            grad_hidden.addmm_(p.mul_(weight), rows)
        target_slope = 1.0 if cap is None else (1 - torch.tanh(raw_target / cap).pow(2)).unsqueeze(-1)
        grad_hidden.sub_(weight * target_slope * table.dequantize(safe))
        return grad_hidden, None, None, None, None


def _logsumexp(hidden: Tensor, table: QuantizedMatrix, chunk: int, cap: float | None) -> Tensor:
    """The log Σ_v exp(logit_v) per row of ``hidden``, a vocabulary chunk at a time."""
    lse = torch.full((hidden.shape[0],), float("-inf"), device=hidden.device)
    for v in range(0, table.rows, chunk):
        lse = torch.logaddexp(lse, chunk_logits(hidden, table, v, min(v + chunk, table.rows), cap).logsumexp(-1))
    return lse


def _softmax_slope(raw: Tensor, lse: Tensor, cap: float | None) -> Tensor:
    """softmax(softcap(raw)) · softcap'(raw), computed in ``raw``'s memory."""
    if cap is None:
        return raw.sub_(lse.unsqueeze(-1)).exp_()
    t = raw.div_(cap).tanh_()
    slope = 1 - t * t
    return t.mul_(cap).sub_(lse.unsqueeze(-1)).exp_().mul_(slope)


def chunked_cross_entropy(hidden: Tensor, targets: Tensor, table: QuantizedMatrix, *, chunk: int = 2048,
                          softcap: float | None = None) -> Tensor:
    """Mean cross-entropy of ``softcap(hidden · tableᵀ)`` against ``targets``.

    Equals ``F.cross_entropy`` on the full logits (``IGNORE`` targets left out), with the same gradient with
    respect to ``hidden``.
    """
    flat = hidden.reshape(-1, hidden.shape[-1])
    return _ChunkedCrossEntropy.apply(flat, targets.reshape(-1), table, chunk, softcap)


@torch.no_grad()
def chunked_scores(hidden: Tensor, targets: Tensor, table: QuantizedMatrix, *, chunk: int = 2048,
                   softcap: float | None = None, k: int = 3) -> tuple[Tensor, Tensor]:
    """Per-token loss and the ``k`` best word ids (for accuracy and top-k), a vocabulary chunk at a time."""
    flat, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    lse = torch.full((flat.shape[0],), float("-inf"))
    best_values = torch.full((flat.shape[0], k), float("-inf"))
    best_ids = torch.zeros((flat.shape[0], k), dtype=torch.long)
    for v in range(0, table.rows, chunk):
        logits = chunk_logits(flat, table, v, min(v + chunk, table.rows), softcap)
        lse = torch.logaddexp(lse, logits.logsumexp(-1))
        values, ids = logits.topk(min(k, logits.shape[-1]), dim=-1)
        merged_values = torch.cat([best_values, values], -1)
        merged_ids = torch.cat([best_ids, ids + v], -1)
        best_values, order = merged_values.topk(k, dim=-1)
        best_ids = merged_ids.gather(-1, order)
    safe = torch.where(targets != IGNORE, targets, 0)
    target_logit = softcapped((flat * table.dequantize(safe)).sum(-1), softcap)
    return lse - target_logit, best_ids
