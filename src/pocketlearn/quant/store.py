"""A quantized pretrained LM in one memory-mapped file: built once from the fp32 model, loaded in seconds.

The file is a pocketlearn checkpoint (atomic, sha256-checked) holding the transformers config, the state of
the quantized model and its non-persistent buffers (rotary tables). Loading builds the architecture on the
meta device (no weight is allocated), swaps in the quantized layers and assigns the file-backed tensors,
so no fp32 copy of the base ever exists and only the pages a step touches become resident.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pocketlearn.checkpoint import load_checkpoint, save_checkpoint
from pocketlearn.errors import DataError
from pocketlearn.quant.model import base_bits, quantize_base

STORE_VERSION = 1


def save_quantized(model: nn.Module, path: str | Path, base: str) -> None:
    """Quantize ``model``'s base (in place) and write it to ``path`` atomically."""
    model.requires_grad_(False)
    quantize_base(model, base)
    persistent = model.state_dict()
    buffers = {n: b for n, b in model.named_buffers() if n not in persistent and b is not None}
    save_checkpoint(path, {"store_version": STORE_VERSION, "base": base, "config": model.config.to_json_string(),
                           "state": persistent, "buffers": buffers})


def load_quantized(path: str | Path) -> nn.Module:
    """The model saved by :func:`save_quantized`, its tensors backed by the file (eval mode, all frozen)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    remedy = "delete it: it is rebuilt from the fp32 model on next use"
    saved = load_checkpoint(path, remedy=remedy, mmap=True)
    if saved.get("store_version") != STORE_VERSION:
        raise DataError(f"{path} is a quantized model of store version {saved.get('store_version')}, this "
                        f"pocketlearn reads {STORE_VERSION}; {remedy}")
    values = json.loads(saved["config"])
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.requires_grad_(False)
    quantize_base(model, saved["base"])  # the same layers, holding meta tensors of the stored shapes
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


def cached_quantized(path: Path, base: str, load_fp32: Callable[[], Any], say: Callable[[str], None] = print
                     ) -> nn.Module:
    """The quantized model at ``path``, built first from ``load_fp32()`` (once) when the file is missing."""
    base_bits(base)
    if not path.exists():
        say(f"quantizing the frozen base to {base} (once): {path}")
        save_quantized(load_fp32(), path, base)
    return load_quantized(path)
