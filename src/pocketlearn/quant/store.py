"""A quantized pretrained LM in one memory-mapped file: built once from the fp32 model, loaded in seconds.

The file is a pocketlearn checkpoint (atomic, sha256-checked) holding the transformers config, the state of
the quantized model and its non-persistent buffers (rotary tables). Loading builds the architecture on the
meta device (no weight is allocated), swaps in the quantized layers and assigns the file-backed tensors,
so no fp32 copy of the base ever exists and only the pages a step touches become resident.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from pocketlearn.checkpoint import load_checkpoint, save_checkpoint
from pocketlearn.errors import DataError
from pocketlearn.quant.blocks import Bits
from pocketlearn.quant.model import base_bits, quantize_base

STORE_VERSION = 2  # 2: layers the model file stores wider than the base keep their width


class StaleQuantizedModel(DataError):
    """A quantized model file written by another store version (rebuilt when it is a cache)."""


def save_quantized(model: nn.Module, path: str | Path, base: str, *, widths: Mapping[str, Bits] | None = None
                   ) -> None:
    """Quantize ``model``'s base in place (``widths``: see :func:`quantize_base`), write it to ``path`` atomically."""
    model.requires_grad_(False)
    quantize_base(model, base, widths=widths)
    persistent = model.state_dict()
    buffers = {n: b for n, b in model.named_buffers() if n not in persistent and b is not None}
    save_checkpoint(path, {"store_version": STORE_VERSION, "base": base, "widths": dict(widths or {}),
                           "config": cast(Any, model).config.to_json_string(), "state": persistent, "buffers": buffers})


def load_quantized(path: str | Path) -> nn.Module:
    """The model saved by :func:`save_quantized`, its tensors backed by the file (eval mode, all frozen)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    remedy = "delete it: it is rebuilt from the fp32 model on next use"
    saved = load_checkpoint(path, remedy=remedy, mmap=True)
    if saved.get("store_version") != STORE_VERSION:
        raise StaleQuantizedModel(f"{path} is a quantized model of store version {saved.get('store_version')}, this "
                        f"pocketlearn reads {STORE_VERSION}; {remedy}")
    values = json.loads(saved["config"])
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.requires_grad_(False)
    quantize_base(model, saved["base"], widths=saved["widths"])  # the same layers, meta tensors of stored shapes
    model.load_state_dict(saved["state"], assign=True)
    for name, tensor in saved["buffers"].items():
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner).register_buffer(leaf, tensor, persistent=False)
    _untie_meta_attributes(model)
    return model.eval()


def _untie_meta_attributes(model: nn.Module) -> None:
    """Rotary modules keep a plain-attribute copy of their table; point it at the loaded one. Then check."""
    for module in model.modules():
        if isinstance(getattr(module, "original_inv_freq", None), torch.Tensor) and hasattr(module, "inv_freq"):
            module.original_inv_freq = module.inv_freq
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise DataError(f"the quantized model file lacks {left[:5]}; delete it to rebuild it")


def cached_quantized(path: Path, base: str, load_fp32: Callable[[], Any], *,
                     widths: Callable[[], Mapping[str, Bits]] = dict, say: Callable[[str], None] = print
                     ) -> nn.Module:
    """The quantized model at ``path``, built first from ``load_fp32()`` (once) when missing or stale.

    ``widths()`` gives the layers the model file stores wider than the base (asked only when building).
    """
    base_bits(base)
    if path.exists():
        try:
            return load_quantized(path)
        except StaleQuantizedModel:
            say(f"{path} was written by an older pocketlearn: rebuilding it")
    say(f"quantizing the frozen base to {base} (once): {path}")
    save_quantized(load_fp32(), path, base, widths=widths())
    return load_quantized(path)
