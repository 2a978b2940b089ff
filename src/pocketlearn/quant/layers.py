"""Frozen layers whose weights stay quantized in memory, dequantized only while they compute.

:class:`QuantLinear`'s autograd function keeps nothing fp32 of its weight: backward dequantizes it again for
the input gradient (a frozen weight needs no gradient, so its input is not kept either).
:class:`QuantEmbedding` dequantizes the rows it looks up; :class:`QuantHead` is the tied output layer over
the same quantized table, whose loss never materializes (tokens × vocabulary) logits (see ``loss.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from pocketlearn.quant.blocks import Bits, QuantizedMatrix, quantize


class QuantizedWeights(nn.Module):
    """Holds a :class:`QuantizedMatrix` as buffers (saved with the module, movable, memory-mappable)."""

    compute_dtype = torch.float32  # what PEFT casts adapters to (the stored dtype is an integer)
    qweight: Tensor  # the buffers _store registers (annotated for the type checker: nn.Module hides them)
    qscale: Tensor
    qoffset: Tensor | None
    qhigh: Tensor | None

    def _store(self, matrix: QuantizedMatrix) -> None:
        self.register_buffer("qweight", matrix.data)
        self.register_buffer("qscale", matrix.scale)
        self.register_buffer("qoffset", matrix.offset)
        self.register_buffer("qhigh", matrix.high)
        self.cols = matrix.cols

    @property
    def matrix(self) -> QuantizedMatrix:
        return QuantizedMatrix(self.qweight, self.qscale, self.qoffset, self.cols, self.qhigh)


class _QuantLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, matrix: QuantizedMatrix, bias: Tensor | None) -> Tensor:
        ctx.matrix, ctx.has_bias = matrix, bias is not None
        return F.linear(x, matrix.dequantize(), bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, Tensor | None]:
        grad_x = grad @ ctx.matrix.dequantize() if ctx.needs_input_grad[0] else None
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, None, grad_bias


class QuantLinear(QuantizedWeights):
    """A frozen ``nn.Linear`` with a block-quantized weight (the bias, if any, stays fp32 and may train)."""

    def __init__(self, matrix: QuantizedMatrix, bias: Tensor | None = None):
        super().__init__()
        self._store(matrix)
        self.in_features, self.out_features = matrix.cols, matrix.rows
        self.bias = nn.Parameter(bias.detach().float(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: Bits) -> QuantLinear:
        return cls(quantize(linear.weight, bits), linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return F.linear(x, self.matrix.dequantize(), self.bias)
        return _QuantLinearFn.apply(x, self.matrix, self.bias)

    def dequantized(self) -> nn.Linear:
        """A plain fp32 ``nn.Linear`` with the same values (for merging adapters or export)."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.matrix.dequantize())
            if self.bias is not None:
                out.bias.copy_(self.bias)
        out.requires_grad_(False)
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.matrix.bits}"


class QuantEmbedding(QuantizedWeights):
    """A frozen embedding table, quantized; a lookup dequantizes only the rows it reads.

    ``scale`` multiplies the looked-up rows (Gemma scales its embeddings by √hidden); a buffer, so that it is
    saved with the table.
    """

    embed_scale: Tensor

    def __init__(self, matrix: QuantizedMatrix, *, padding_idx: int | None = None, scale: Tensor | float = 1.0):
        super().__init__()
        self._store(matrix)
        self.num_embeddings, self.embedding_dim = matrix.rows, matrix.cols
        self.padding_idx = padding_idx
        self.register_buffer("embed_scale", torch.as_tensor(scale, dtype=torch.float32).detach().clone())

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, bits: Bits) -> QuantEmbedding:
        scale = getattr(embedding, "embed_scale", 1.0)  # Gemma's scaled word embedding
        return cls(quantize(embedding.weight, bits), padding_idx=embedding.padding_idx, scale=scale)

    def forward(self, ids: Tensor) -> Tensor:
        rows = self.matrix.dequantize(ids.reshape(-1)).mul_(self.embed_scale)
        return rows.view(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.matrix.bits}"


class QuantHead(nn.Module):
    """The output layer tied to a :class:`QuantEmbedding`: logits = hidden · tableᵀ, a vocabulary chunk at a time.

    Calling it gives logits (for generation: a few positions); :meth:`loss` gives the cross-entropy without
    them. ``softcap`` is Gemma's final-logit soft cap (cap · tanh(logit / cap)), None for none.
    """

    table: QuantEmbedding

    def __init__(self, table: QuantEmbedding, *, softcap: float | None = None, chunk: int = 2048):
        super().__init__()
        object.__setattr__(self, "table", table)  # not a child: its buffers belong to the embedding
        self.softcap, self.chunk = softcap, chunk
        self.in_features, self.out_features = table.embedding_dim, table.num_embeddings

    def forward(self, hidden: Tensor) -> Tensor:
        from pocketlearn.quant.loss import chunk_logits, softcapped

        matrix = self.table.matrix
        if torch.is_grad_enabled() and hidden.requires_grad:  # a custom loss on the logits: correct, not lean
            return softcapped(_QuantLinearFn.apply(hidden, matrix, None), self.softcap)
        parts = [chunk_logits(hidden, matrix, v, min(v + self.chunk, matrix.rows), self.softcap)
                 for v in range(0, matrix.rows, self.chunk)]
        return torch.cat(parts, dim=-1)

    def loss(self, hidden: Tensor, targets: Tensor) -> Tensor:
        from pocketlearn.quant.loss import chunked_cross_entropy

        return chunked_cross_entropy(hidden, targets, self.table.matrix, chunk=self.chunk, softcap=self.softcap)

    def extra_repr(self) -> str:
        return f"tied to the quantized embedding, chunks of {self.chunk}, softcap={self.softcap}"
