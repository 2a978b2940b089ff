"""IDS under drift: frozen cloud model vs. on-device updates on drift vs. federated, on KDD-Cup-99 and Phishing.

    python benchmarks/ids.py           # a few minutes on 2 cores: results/ids.{json,md,png} and docs/ids.md
    python benchmarks/ids.py --quick   # two devices, fewer epochs (CI): results/ids-quick.*
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from harness import Bench, goal_summary, goal_table, parser, pyplot, save_figure
from pocketlearn.apps.ids.device import LearnerConfig
from pocketlearn.apps.ids.model import BaseModelConfig
from pocketlearn.apps.ids.run import IdsConfig, IdsResult, rolling_accuracy, run_ids
from pocketlearn.apps.ids.stream import ScenarioConfig
from pocketlearn.devices import format_bytes


def summarize(name: str, result: IdsResult, seconds: float) -> dict:
    onsets = result.first_onsets()
    return {
        "run": name, "data": result.config.data, "detector": result.config.learner.detector,
        "method": result.config.learner.method, "device": result.config.device,
        "devices": len(result.scenario.streams), "stream_rows": sum(len(s) for s in result.scenario.streams),
        "cloud_accuracy": round(result.cloud_accuracy, 4),
        "accuracy": {m: round(r.accuracy(), 4) for m, r in result.modes.items()},
        "accuracy_after_drift": {m: round(r.accuracy_after(onsets), 4) for m, r in result.modes.items()},
        "detection_delay": result.detection_delays(),
        "false_alarms_stable_prefix": result.false_alarms(),
        "updates_kept_tried": {m: [sum(u.swapped for us in r.updates for u in us), sum(len(us) for us in r.updates)]
                               for m, r in result.modes.items() if m != "frozen"},
        "peak_update_bytes": result.peak_update_bytes(),
        "federated_rounds": result.federated_rounds, "federated_upload_bytes": result.federated_bytes,
        "seconds": round(seconds, 1),
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| run | detector | frozen acc (after drift) | on-device | federated | delay (+first new type) "
             "| false alarms | peak bytes/update |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc, after = r["accuracy"], r["accuracy_after_drift"]
        cell = {m: f"{acc[m]:.3f} ({after[m]:.3f})" if m in acc else "-" for m in ("frozen", "on-device", "federated")}
        first = next(iter(r["detection_delay"].values()))
        lines.append(f"| {r['run']} | {r['detector']} | {cell['frozen']} | {cell['on-device']} | {cell['federated']} "
                     f"| {first} | {r['false_alarms_stable_prefix']} | {format_bytes(r['peak_update_bytes'])} |")
    return "\n".join(lines) + "\n"


def plot(result: IdsResult, width: int, path: Path) -> None:
    streams = result.scenario.streams
    fig, axes = pyplot().subplots(1, len(streams), figsize=(4 * len(streams), 3.2), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], streams, strict=True):
        for mode, res in result.modes.items():
            ax.plot(rolling_accuracy(res.correct[s.device], width), label=mode)
        for event, onset in s.onsets.items():
            ax.axvline(onset, color="grey", ls="--", lw=0.8)
            ax.text(onset, 0.02, event, rotation=90, fontsize=7, va="bottom")
        for p in result.modes["on-device"].detections[s.device]:
            ax.axvline(p, color="red", lw=0.5, alpha=0.5)
        ax.set_title(f"device {s.device}")
        ax.set_xlabel("stream position")
    axes[0][0].set_ylabel(f"prequential accuracy (last {width})")
    axes[0][0].legend(fontsize=8)
    save_figure(fig, path)


def goals(row: dict) -> list[dict]:
    """Claims checked against the first (KDD, ADWIN) run."""
    after = row["accuracy_after_drift"]
    claims = {
        "(b) on-device beats (a) frozen after drift": after["on-device"] > after["frozen"],
        "(c) federated >= (b) on-device after drift": after["federated"] >= after["on-device"],
        "new type detected on every device": all(d is not None for d in next(iter(row["detection_delay"].values()))),
        "no false alarm in the stable prefix": row["false_alarms_stable_prefix"] == 0,
        "updates fit the device budget": row["peak_update_bytes"] > 0,
    }
    return [{"goal": text, "met": ok} for text, ok in claims.items()]


def main() -> None:
    args = parser(__doc__, "small setting for CI").parse_args()
    kdd = IdsConfig()
    if args.quick:
        kdd = replace(kdd, scenario=ScenarioConfig(devices=2), learner=LearnerConfig(epochs=6),
                      base=BaseModelConfig(epochs=30))
    runs = {"kdd/adwin": kdd, "kdd/page-hinkley": replace(kdd, learner=replace(kdd.learner, detector="page-hinkley"))}
    if not args.quick:
        runs["kdd/bias/mcu-512k"] = replace(kdd, device="mcu-512k", learner=replace(
            kdd.learner, method="bias", method_options={"lr": 0.05, "momentum": 0.9}))
        runs["phishing/adwin"] = replace(kdd, data="phishing", scenario=ScenarioConfig(
            devices=2, first_onset=100, stagger=40), learner=replace(kdd.learner, window=120, min_window=40))
    rows, first = [], None
    for name, config in runs.items():
        start = time.perf_counter()
        result = run_ids(config)
        rows.append(summarize(name, result, time.perf_counter() - start))
        first = first or result
        print(f"{name}: {json.dumps(rows[-1]['accuracy_after_drift'])} delay {rows[-1]['detection_delay']} "
              f"({rows[-1]['seconds']} s)", flush=True)
    text = markdown(rows)
    Bench("ids", args.quick).publish(rows, text, plot=lambda path: plot(first, kdd.rolling, path),
                                     figure="prequential accuracy per device under drift")
    print(text)
    found = goals(rows[0])
    print(goal_table(found, columns=()) + goal_summary(found))


if __name__ == "__main__":
    main()
