"""Turning a model's frozen base into quantized layers, and the LM loss that goes with it."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Literal

from torch import Tensor, nn

from pocketlearn.errors import ConfigError
from pocketlearn.quant.blocks import Bits
from pocketlearn.quant.layers import QuantEmbedding, QuantHead, QuantLinear
from pocketlearn.quant.loss import chunked_scores

Base = Literal["fp32", "q4", "q8"]
BASES: dict[str, Bits | None] = {"fp32": None, "q4": 4, "q8": 8}


def base_bits(base: str) -> Bits | None:
    """4 or 8 for a quantized base, None for fp32; a clear error for anything else."""
    if base not in BASES:
        raise ConfigError(f"base should be one of {sorted(BASES)} (how the frozen weights are stored), got {base!r}")
    return BASES[base]


def quantized_bits(model: nn.Module) -> Bits | None:
    """The bits of the model's base: its narrowest quantized layers (None when it has none)."""
    found = {m.matrix.bits for m in model.modules() if isinstance(m, QuantLinear | QuantEmbedding)}
    return min(found) if found else None


def quantize_base(model: nn.Module, base: str, *, keep: Collection[str] = (),
                  widths: Mapping[str, Bits] | None = None) -> nn.Module:
    """Store every frozen Linear, the input embedding and a tied output head of ``model`` quantized, in place.

    Layers named in ``keep`` (and any with a trainable weight) stay fp32; a layer named in ``widths`` gets
    that many bits where the base has fewer (a model file that stored it wider). A model already quantized
    with the same base is left as it is, so a factory may hand over a model loaded quantized.
    """
    bits = base_bits(base)
    if bits is None:
        return model
    have = quantized_bits(model)
    if have is not None:
        if have != bits:
            raise ConfigError(f"the model's base is already {have}-bit; ask for base='q{have}' or load it in fp32")
        return model
    widths = widths or {}

    def bits_of(name: str) -> Bits:
        return max(bits, widths.get(name, bits))

    _swap_embedding_and_head(model, bits_of, keep)
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and name not in keep and not module.weight.requires_grad:
            _replace(model, name, QuantLinear.from_linear(module, bits_of(name)))
    return model


def _swap_embedding_and_head(model: nn.Module, bits_of: Callable[[str], Bits], keep: Collection[str]) -> None:
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    embedding = get_in() if callable(get_in) else None
    if not isinstance(embedding, nn.Embedding) or embedding.weight.requires_grad:
        return
    head = get_out() if callable(get_out) else None
    names = {m: n for n, m in model.named_modules()}
    table = QuantEmbedding.from_embedding(embedding, bits_of(names[embedding]))
    if names[embedding] not in keep:
        _replace(model, names[embedding], table)
    tied = isinstance(head, nn.Linear) and head.weight is embedding.weight and head.bias is None
    if tied and names[head] not in keep:
        softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
        _replace(model, names[head], QuantHead(table, softcap=softcap))


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _lean_head(model: nn.Module, inputs: Tensor) -> tuple[QuantHead, Tensor] | None:
    """A transformers LM's :class:`QuantHead` and its decoder's last hidden states, or None without one."""
    head, decoder = getattr(model, "lm_head", None), getattr(model, "model", None)
    if not isinstance(head, QuantHead) or decoder is None:
        return None
    return head, decoder(input_ids=inputs).last_hidden_state


def lean_lm_loss(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor | None:
    """The LM loss through a :class:`QuantHead` (no full logits), or None when the model has no such head."""
    found = _lean_head(model, inputs)
    return None if found is None else found[0].loss(found[1], targets)


def lean_lm_scores(model: nn.Module, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor] | None:
    """Per-token loss and top-3 word ids through a :class:`QuantHead`, or None without one (for evaluation)."""
    found = _lean_head(model, inputs)
    if found is None:
        return None
    head, hidden = found
    return chunked_scores(hidden, targets, head.table.matrix, chunk=head.chunk, softcap=head.softcap)
