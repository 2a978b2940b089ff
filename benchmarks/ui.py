"""The UI learner: crawl the Debian documentation apps and the local web apps (Optuna Dashboard, TensorBoard) in a
fenced Chromium, then learn tappability from pixels across devices, stage after stage, scored on apps no device
crawled.

    python benchmarks/ui.py            # full run: every installed app (crawl ~13 min the first time, then cached)
    python benchmarks/ui.py --quick    # four apps, a page each, for CI; writes results/ui-quick.*

The crawl goes to runs/bench-ui-crops[-quick] and resumes there (a rerun taps only what is missing); its taps per
second come from the stored pages (page loads and restores included). Learning: every device has the same
device profile; the planner picks the method that fits it; the step's peak is measured in a fresh process.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from rich.console import Console

from harness import ROOT, Bench, goal, goal_summary, goal_table, parser
from pocketlearn.apps.ui.browser import Browser
from pocketlearn.apps.ui.corpus import split_apps
from pocketlearn.apps.ui.crawler import CrawlSettings, crawl
from pocketlearn.apps.ui.dataset import CropStore
from pocketlearn.apps.ui.learn import Curve, LearnSettings, learn, scores
from pocketlearn.apps.ui.report import curve_json, plot_curve
from pocketlearn.apps.ui.servers import running_corpus, servers_folder
from pocketlearn.devices import get_device
from pocketlearn.memory.measure import measure
from pocketlearn.progress import working

console = Console()
QUICK_APPS = ("python", "sqlite", "flask", "git")


def label_quality(store: CropStore, held_out: list[str]) -> dict[str, float]:
    """The tap labels against the DOM's reference (links, controls, click handlers): agreement, precision, recall.

    Also that reference as a rule on the held-out apps (it sees click handlers, which the no-learning rule does not).
    """
    held = store.load(held_out)
    data = store.load()
    labels, reference = data.labels, data.reference
    tp = float((labels & reference).sum())
    return {"crops": float(len(labels)), "tappable": float(labels.mean()),
            "agreement": float((labels == reference).mean()),
            "precision": tp / max(1.0, float(labels.sum())), "recall": tp / max(1.0, float(reference.sum())),
            "taps_per_s": len(labels) / max(1e-9, data.seconds),
            "held_out_reference_f1": scores(held.reference.astype(float), held.labels).f1}


def step_peak(method: str, settings: LearnSettings) -> int:
    """A device's training step as it runs it (its method and local optimizer), measured in a fresh process."""
    from pocketlearn.models import get_model_spec

    example = get_model_spec("ui-cnn").example_batch(settings.batch_size)
    return measure("ui-cnn", method, example, options={"optimizer": settings.optimizer}, steps=2, threads=1
                   ).peak_bytes


def goals(curve: Curve, quality: dict[str, float], peak: int, budget: int) -> list[dict[str, Any]]:
    last, first = curve.stages[-1], curve.stages[0]
    fed, pooled, alone, rule = last.federated.f1, last.pooled.f1, last.alone.f1, curve.rule.f1
    return [
        goal("federated F1 within 3 points of pooled training", fed - pooled, ">= -0.03", fed >= pooled - 0.03),
        goal("federated F1 at least 5 points above the devices alone", fed - alone, ">= 0.05", fed >= alone + 0.05),
        goal("federated F1 above the no-learning rule (link or form control in the DOM)", fed - rule, "> 0",
             fed > rule),
        goal("the device step inside its profile's budget (measured peak, MiB)", peak / 2**20,
             f"<= {budget / 2**20:.0f}", peak <= budget),
        goal("taps per second per browser", quality["taps_per_s"], ">= 1", quality["taps_per_s"] >= 1),
        goal("F1 after the last stage above F1 after the first", last.federated.f1 - first.federated.f1, "> 0",
             last.federated.f1 > first.federated.f1),
    ]


def report(curve: Curve, quality: dict[str, float], split: dict[str, Any], found: list[dict[str, Any]]) -> str:
    text = (f"{int(quality['crops'])} taps on {sum(map(len, split['devices_apps']))} device apps and "
            f"{len(split['held_out'])} held-out apps ({', '.join(split['held_out'])}); "
            f"{quality['tappable']:.0%} of the taps changed the screen. The labels (from pixels and the URL) "
            f"agree with the DOM's reference on {quality['agreement']:.1%} of taps (precision "
            f"{quality['precision']:.3f}, recall {quality['recall']:.3f} against it). Crawl speed "
            f"{quality['taps_per_s']:.2f} taps per second, page loads and restores included.\n\n")
    text += ("| stage | crops seen | F1 federated | F1 alone | F1 pooled | AUC federated | AUC pooled "
             "| bytes/client-round |\n")
    text += "|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    for r in curve.stages:
        text += (f"| {r.stage} | {r.crops_seen} | {r.federated.f1:.3f} | {r.alone.f1:.3f} | {r.pooled.f1:.3f} | "
                 f"{r.federated.auc:.3f} | {r.pooled.auc:.3f} | {r.bytes_per_client_round:,.0f} |\n")
    text += (f"\nNo-learning rule (a link or form control in the DOM): F1 {curve.rule.f1:.3f} (precision "
             f"{curve.rule.precision:.3f}, recall {curve.rule.recall:.3f}). The DOM's whole reference (click "
             f"handlers too, which the rule does not see): F1 {quality['held_out_reference_f1']:.3f}.\n\n")
    return text + goal_table(found, value="{:.3f}")


def main() -> None:
    args = parser(__doc__, "four apps, one page each, two stages (CI)").parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    crawl_settings = CrawlSettings(pages_per_app=1, screens=1, taps_per_page=12) if args.quick else \
        CrawlSettings(pages_per_app=3, screens=2, taps_per_page=16)
    devices, held_out = (2, 1) if args.quick else (4, 3)
    settings = LearnSettings(stages=2, rounds=2) if args.quick else LearnSettings(stages=4)
    store = CropStore(ROOT / "runs" / ("bench-ui-crops-quick" if args.quick else "bench-ui-crops"))
    with running_corpus(QUICK_APPS if args.quick else None, servers_folder(store.root)) as (apps, fence), \
            working(console, "crawling") as status, Browser(fence) as browser:
        crawled = crawl(apps, store, browser, crawl_settings, on_page=lambda app, url, r: status.update(
            f"{app.name}: {r.screens} screens, {r.taps} taps"))
    dealt, evaluation = split_apps(apps, devices, held_out)
    split = {"devices_apps": [[a.name for a in d] for d in dealt], "held_out": [a.name for a in evaluation]}
    with working(console, "learning") as status:
        curve = learn(store, split["devices_apps"], split["held_out"], settings,
                      on_stage=lambda r: status.update(f"stage {r.stage}: F1 {r.federated.f1:.3f}"))
    device = get_device(settings.device)
    peak = step_peak(curve.stages[-1].method, settings)
    quality = label_quality(store, split["held_out"])
    found = goals(curve, quality, peak, device.memory_budget_bytes)
    text = report(curve, quality, split, found)
    data = {"crawl": {"new_taps": crawled.taps, "refused": len(crawled.refused), "failed_taps": crawled.failed_taps},
            "labels": quality, "split": split, "settings": asdict(settings), "step_peak_bytes": peak,
            "stages": [asdict(r) for r in curve.stages], "rule": asdict(curve.rule), "goals": found,
            "seconds": time.perf_counter() - start}
    Bench("ui", args.quick).publish(data, text, plot=lambda path: plot_curve(curve_json(curve), path),
                                    figure="F1 of tappability on held-out apps per stage")
    console.print(text)
    console.print(goal_summary(found), style="bold")
    console.print(f"{time.perf_counter() - start:.0f} s; fence refused {len(crawled.refused)} requests; "
                  f"{np.mean([r.federated.auc for r in curve.stages]):.3f} mean federated AUC")


if __name__ == "__main__":
    main()
