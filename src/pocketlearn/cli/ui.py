"""``pocketlearn ui``: tap real interfaces in a fenced browser and keep the labelled crops (the UI learner)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

ui_app = typer.Typer(help="The UI learner: crawl interfaces in a fenced headless Chromium and label every tap.",
                     no_args_is_help=True)


@ui_app.command("apps")
def apps_command() -> None:
    """The documentation apps this machine has (the corpus), and the Debian package of each missing one."""
    from pocketlearn.apps.ui.corpus import DEBIAN_DOCS

    console = Console(highlight=False)
    for name, (package, root, start) in DEBIAN_DOCS.items():
        here = (root / start).is_file()
        console.print(f"{name:<11} {'installed' if here else 'missing: apt install ' + package:<40} {root / start}")


@ui_app.command("crawl")
def crawl_command(
    out: Annotated[Path, typer.Option(help="Folder of the crawled crops (one shard per page; a rerun resumes).")
                   ] = Path("runs/ui-crops"),
    apps: Annotated[str | None, typer.Option(help="Comma-separated apps (`pocketlearn ui apps`); default: all "
                                             "installed.")] = None,
    pages: Annotated[int, typer.Option(min=1, help="Pages per app, breadth first from its start page.")] = 4,
    screens: Annotated[int, typer.Option(min=1, help="Screens per page: its top, then scrolled a screen down each."
                                         )] = 2,
    taps: Annotated[int, typer.Option(min=1, help="Taps per screen (a seeded sample of its elements).")] = 24,
    timeout: Annotated[float, typer.Option(min=0.5, help="Seconds any one tap may take before the browser is "
                                           "restarted.")] = 5.0,
    seed: Annotated[int, typer.Option(help="Which elements of a page are tapped.")] = 0,
) -> None:
    """Crawl APPS: tap elements, label each tap from the screens before and after, keep a crop of each element."""
    from pocketlearn.apps.ui.browser import Browser
    from pocketlearn.apps.ui.corpus import debian_apps
    from pocketlearn.apps.ui.crawler import CrawlSettings, crawl
    from pocketlearn.apps.ui.dataset import CropStore
    from pocketlearn.apps.ui.fence import Fence
    from pocketlearn.progress import working

    console = Console(highlight=False, soft_wrap=True)
    chosen = debian_apps([a.strip() for a in apps.split(",") if a.strip()] if apps else None)
    if not chosen:
        from pocketlearn.errors import ConfigError

        raise ConfigError("no documentation app is installed; `pocketlearn ui apps` lists them and their packages")
    settings = CrawlSettings(pages_per_app=pages, screens=screens, taps_per_page=taps, timeout_s=timeout, seed=seed)
    store = CropStore(out)
    with working(console, f"crawling {len(chosen)} apps") as status, \
            Browser(Fence([a.root for a in chosen]), timeout_s=timeout) as browser:
        report = crawl(chosen, store, browser, settings, on_page=lambda app, url, r: status.update(
            f"{app.name}: {r.pages} pages, {r.taps} taps ({r.changed} changed the screen), {r.failed_taps} failed"))
    console.print(f"{report.pages} pages crawled ({report.skipped_pages} already in {out}), {report.taps} taps in "
                  f"{report.seconds:.0f} s ({report.taps_per_s:.2f} per second), {report.changed} changed the screen, "
                  f"{report.failed_taps} failed (browser restarted {browser.restarts} times)")
    console.print(f"the fence refused {len(report.refused)} requests (outside the corpus), e.g. "
                  f"{', '.join(sorted(set(report.refused))[:3]) or 'none'}")
    data = store.load()
    agree = data.labels == data.reference
    console.print(f"{out}: {len(data.labels)} crops, {data.labels.mean():.0%} labelled tappable; labels agree with "
                  f"the DOM (links, controls, click handlers) on {agree.mean():.0%}")


@ui_app.command("learn")
def learn_command(
    crops: Annotated[Path, typer.Option(help="The crawled crops (`pocketlearn ui crawl --out`).")
                     ] = Path("runs/ui-crops"),
    devices: Annotated[int, typer.Option(min=1, help="Devices; the crawled apps are dealt among them.")] = 4,
    held_out: Annotated[int, typer.Option(min=1, help="Apps no device crawls: the model is scored on them.")] = 3,
    stages: Annotated[int, typer.Option(min=1, help="Crawl increments (each device crawls more at each).")] = 4,
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds per stage.")] = 20,
    replay: Annotated[int, typer.Option(min=1, help="Crops a device keeps (a uniform sample of all it saw).")] = 512,
    device: Annotated[str, typer.Option(help="Device profile of every device (`pocketlearn devices`).")
                      ] = "phone-1g",
    secagg: Annotated[bool, typer.Option(help="Aggregate by secure aggregation.")] = False,
    noise: Annotated[float, typer.Option(min=0, help="DP-FedAvg noise multiplier (0: no DP).")] = 0.0,
    model: Annotated[Path, typer.Option(help="Where to write the federated model after the last stage.")
                     ] = Path("runs/ui-model.pt"),
) -> None:
    """Learn tappability from pixels across devices, stage after stage; scored on held-out apps."""
    from rich.table import Table

    from pocketlearn.apps.ui.corpus import App, split_apps
    from pocketlearn.apps.ui.dataset import CropStore
    from pocketlearn.apps.ui.learn import LearnSettings, learn
    from pocketlearn.checkpoint import save_checkpoint
    from pocketlearn.progress import working

    console = Console(highlight=False, soft_wrap=True)
    store = CropStore(crops)
    names = sorted({p.app for p in store.pages()})
    dealt, evaluation = split_apps([App(n, crops) for n in names], devices, held_out)
    device_apps = [[a.name for a in d] for d in dealt]
    console.print(f"devices' apps: {device_apps}; held out: {[a.name for a in evaluation]}")
    settings = LearnSettings(stages=stages, rounds=rounds, replay=replay, device=device, secagg=secagg,
                             noise_multiplier=noise)
    table = Table("stage", "crops seen", "F1 federated", "F1 alone", "F1 pooled", "AUC federated", "method",
                  "bytes/client-round", title="Tappability on held-out apps, from pixels")
    with working(console, "learning") as status:
        curve = learn(store, device_apps, [a.name for a in evaluation], settings,
                      on_stage=lambda r: status.update(f"stage {r.stage}/{stages}: F1 {r.federated.f1:.3f}"))
    model.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, {"model": curve.model, "model_name": "ui-cnn"})
    for r in curve.stages:
        table.add_row(str(r.stage), str(r.crops_seen), f"{r.federated.f1:.3f}", f"{r.alone.f1:.3f}",
                      f"{r.pooled.f1:.3f}", f"{r.federated.auc:.3f}", r.method, f"{r.bytes_per_client_round:,.0f}")
    console.print(table)
    rule = curve.rule
    console.print(f"no-learning rule (the DOM: link, control or click handler): F1 {rule.f1:.3f}, precision "
                  f"{rule.precision:.3f}, recall {rule.recall:.3f}")
    console.print(f"the federated model: {model} (`pocketlearn ui predict PAGE --model {model}`)")


@ui_app.command("predict")
def predict_command(
    page: Annotated[Path, typer.Argument(help="An HTML page on this machine (e.g. an app's index.html).")],
    model: Annotated[Path, typer.Option(help="The model `pocketlearn ui learn` wrote.")] = Path("runs/ui-model.pt"),
    out: Annotated[Path, typer.Option(help="The outlined screen (PNG).")] = Path("runs/ui-predict.png"),
) -> None:
    """Outline every element of PAGE with the model's probability that it is tappable (green: yes, red: no)."""
    from pocketlearn.apps.ui.predict import predict_page, tappability_model

    out.parent.mkdir(parents=True, exist_ok=True)
    judged = predict_page(page, tappability_model(model), out)
    yes = sum(p >= 0.5 for _, p in judged)
    Console(highlight=False, soft_wrap=True).print(f"{out}: {len(judged)} elements, {yes} predicted tappable")
