"""A UI learning run's curve on disk (``ui-curve.json`` in its run folder), and its plot (``pocketlearn report``)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pocketlearn.apps.ui.learn import Curve
from pocketlearn.checkpoint import write_atomic
from pocketlearn.errors import DataError

CURVE_FILE = "ui-curve.json"
LEARNERS = (("federated", "tab:blue"), ("alone", "tab:orange"), ("pooled", "tab:green"))


def curve_json(curve: Curve, **extra: Any) -> dict[str, Any]:
    """The curve's scores (the model is saved beside it, not in it)."""
    return {"stages": [asdict(r) for r in curve.stages], "rule": asdict(curve.rule), **extra}


def write_curve(run: Path, curve: Curve, **extra: Any) -> Path:
    path = run / CURVE_FILE
    write_atomic(path, json.dumps(curve_json(curve, **extra), indent=1).encode())
    return path


def read_curve(run: Path) -> dict[str, Any]:
    path = run / CURVE_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        [(s["stage"], s["federated"]["f1"], s["alone"]["f1"], s["pooled"]["f1"]) for s in data["stages"]]
        data["rule"]["f1"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path} is not a UI learning curve ({err!r}); run `pocketlearn ui learn --out {run}` "
                        "again") from None
    return data


def plot_curve(data: dict[str, Any], path: Path) -> Path:
    """F1 on the held-out apps after each stage, for each way of learning, and the DOM rule's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    stages = [s["stage"] for s in data["stages"]]
    for name, colour in LEARNERS:
        ax.plot(stages, [s[name]["f1"] for s in data["stages"]], marker="o", color=colour, label=name)
    ax.axhline(data["rule"]["f1"], color="k", ls="--", label="DOM rule (no learning)")
    ax.set(xlabel="stage (each device has crawled more of its apps)", ylabel="F1 on held-out apps",
           title="Tappability from pixels", xticks=stages)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
