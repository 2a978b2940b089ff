"""``pocketlearn ui``: tap real interfaces in a fenced browser, label every tap, learn tappability across devices."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from pocketlearn.apps.ui.crawler import CrawlSettings
    from pocketlearn.apps.ui.dataset import CropStore
    from pocketlearn.apps.ui.learn import Curve, LearnSettings

ui_app = typer.Typer(help="The UI learner: crawl interfaces in a fenced headless Chromium, label every tap, and "
                     "learn from pixels which elements are tappable, across devices.", no_args_is_help=True)


@ui_app.command("apps")
def apps_command() -> None:
    """The apps this machine has (the corpus), and how to install each missing one."""
    from pocketlearn.apps.ui.corpus import DEBIAN_DOCS
    from pocketlearn.apps.ui.servers import LOCAL_APPS, installed_local_apps

    console = Console(highlight=False)
    for name, (package, root, start) in DEBIAN_DOCS.items():
        here = (root / start).is_file()
        console.print(f"{name:<11} {'installed' if here else 'missing: apt install ' + package:<40} {root / start}")
    for name, app in LOCAL_APPS.items():
        here = name in installed_local_apps()
        how = f"missing: pip install 'pocketlearn[{app.extra}]'"
        console.print(f"{name:<11} {'installed' if here else how:<40} "
                      f"a local web app, started on 127.0.0.1 for the crawl")


@ui_app.command("crawl")
def crawl_command(
    out: Annotated[Path, typer.Option(help="Folder of the crawled crops (one shard per screen; a rerun resumes).")
                   ] = Path("runs/ui/crops"),
    apps: Annotated[str | None, typer.Option(help="Comma-separated apps (`pocketlearn ui apps`); default: all "
                                             "installed.")] = None,
    pages: Annotated[int, typer.Option(min=1, help="Pages per app, breadth first from its start page.")] = 3,
    screens: Annotated[int, typer.Option(min=1, help="Screens per page: its top, then scrolled a screen down each."
                                         )] = 2,
    taps: Annotated[int, typer.Option(min=1, help="Taps per screen (a seeded sample of its elements).")] = 16,
    timeout: Annotated[float, typer.Option(min=0.5, help="Seconds any one tap may take before the browser is "
                                           "restarted.")] = 5.0,
    seed: Annotated[int, typer.Option(help="Which elements of a screen are tapped.")] = 0,
) -> None:
    """Crawl APPS: tap elements, label each tap from the screens before and after, keep a crop of each element."""
    from pocketlearn.apps.ui.crawler import CrawlSettings

    names = [a.strip() for a in apps.split(",") if a.strip()] if apps else None
    run_crawl(names, out, CrawlSettings(pages_per_app=pages, screens=screens, taps_per_page=taps, timeout_s=timeout,
                                        seed=seed), Console(highlight=False, soft_wrap=True))


@ui_app.command("learn")
def learn_command(
    crops: Annotated[Path, typer.Option(help="The crawled crops (`pocketlearn ui crawl --out`).")
                     ] = Path("runs/ui/crops"),
    out: Annotated[Path, typer.Option(help="Run folder: the federated model (model.pt) and the curve "
                                      "(ui-curve.json, `pocketlearn report` plots it).")] = Path("runs/ui"),
    devices: Annotated[int, typer.Option(min=1, help="Devices; the crawled apps are dealt among them.")] = 4,
    held_out: Annotated[int, typer.Option(min=1, help="Apps no device crawls: the model is scored on them.")] = 3,
    stages: Annotated[int, typer.Option(min=1, help="Crawl increments (each device crawls more at each).")] = 4,
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds per stage.")] = 20,
    replay: Annotated[int, typer.Option(min=1, help="Crops a device keeps (a uniform sample of all it saw).")] = 512,
    inverted: Annotated[float, typer.Option(min=0, max=1, help="Share of them kept colour-inverted (a dark theme "
                                                                "of the same interface).")] = 0.5,
    device: Annotated[str, typer.Option(help="Device profile of every device (`pocketlearn devices`).")
                      ] = "phone-1g",
    secagg: Annotated[bool, typer.Option(help="Aggregate by secure aggregation.")] = False,
    noise: Annotated[float, typer.Option(min=0, help="DP-FedAvg noise multiplier (0: no DP).")] = 0.0,
) -> None:
    """Learn tappability from pixels across devices, stage after stage; scored on held-out apps."""
    from pocketlearn.apps.ui.dataset import CropStore
    from pocketlearn.apps.ui.learn import LearnSettings

    settings = LearnSettings(stages=stages, rounds=rounds, replay=replay, inverted=inverted, device=device,
                             secagg=secagg, noise_multiplier=noise)
    run_learning(CropStore(crops), devices, held_out, settings, out, Console(highlight=False, soft_wrap=True))


@ui_app.command("run")
def run_command(
    config: Annotated[Path, typer.Argument(help="A UI job (TOML), or a bundled example by name (ui).")],
    runs: Annotated[Path, typer.Option(help="Folder of run folders.")] = Path("runs"),
) -> None:
    """Crawl, then learn, as CONFIG says; everything in RUNS/<name>/ (a rerun resumes the crawl)."""
    from pocketlearn.apps.ui.crawler import CrawlSettings
    from pocketlearn.apps.ui.dataset import CropStore
    from pocketlearn.apps.ui.job import load_job
    from pocketlearn.apps.ui.learn import LearnSettings

    job = load_job(config)
    console = Console(highlight=False, soft_wrap=True)
    c, s = job.crawl, job.learn
    folder = runs / job.name
    run_crawl(c.apps or None, folder / "crops", CrawlSettings(pages_per_app=c.pages, screens=c.screens,
                                                              taps_per_page=c.taps, timeout_s=c.timeout_s,
                                                              seed=c.seed), console)
    settings = LearnSettings(stages=s.stages, rounds=s.rounds, replay=s.replay, inverted=s.inverted, device=s.device,
                             epochs=s.epochs, batch_size=s.batch_size, optimizer=s.optimizer, lr=s.lr,
                             momentum=s.momentum, seed=s.seed, secagg=s.secagg, noise_multiplier=s.noise_multiplier)
    run_learning(CropStore(folder / "crops"), s.devices, s.held_out, settings, folder, console)


@ui_app.command("predict")
def predict_command(
    page: Annotated[Path, typer.Argument(help="An HTML page on this machine (e.g. an app's index.html), or a PNG "
                                              "screenshot (elements found from its pixels).")],
    model: Annotated[Path, typer.Option(help="The model `pocketlearn ui learn` wrote.")] = Path("runs/ui/model.pt"),
    out: Annotated[Path, typer.Option(help="The outlined screen (PNG).")] = Path("runs/ui/predicted.png"),
    scale: Annotated[float, typer.Option(min=0.5, max=4.0, help="A screenshot's pixels per CSS pixel (a phone's: "
                                                                "2-3).")] = 1.0,
) -> None:
    """Outline every element of PAGE with the model's probability that it is tappable (green: yes, red: no)."""
    from pocketlearn.apps.ui.predict import predict, tappability_model

    out.parent.mkdir(parents=True, exist_ok=True)
    judged = predict(page, tappability_model(model), out, scale)
    yes = sum(p >= 0.5 for _, p in judged)
    Console(highlight=False, soft_wrap=True).print(f"{out}: {len(judged)} elements, {yes} predicted tappable")


def run_crawl(apps: list[str] | None, out: Path, settings: CrawlSettings, console: Console) -> CropStore:
    """Crawl ``apps`` (None: every installed one) into ``out`` with progress, and say what it found."""
    from pocketlearn.apps.ui.browser import Browser
    from pocketlearn.apps.ui.crawler import crawl
    from pocketlearn.apps.ui.dataset import CropStore
    from pocketlearn.apps.ui.servers import running_corpus, servers_folder
    from pocketlearn.errors import ConfigError
    from pocketlearn.progress import working

    store = CropStore(out)
    with running_corpus(apps, servers_folder(out)) as (chosen, fence):
        if not chosen:
            raise ConfigError("no app is installed; `pocketlearn ui apps` lists them and how to install each")
        with working(console, f"crawling {len(chosen)} apps") as status, \
                Browser(fence, timeout_s=settings.timeout_s) as browser:
            report = crawl(chosen, store, browser, settings, on_page=lambda app, url, r: status.update(
                f"{app.name}: {r.screens} screens, {r.taps} taps ({r.changed} changed the screen), "
                f"{r.failed_taps} failed"))
    console.print(f"{report.screens} screens crawled ({report.skipped_screens} already in {out}), {report.taps} "
                  f"taps in {report.seconds:.0f} s ({report.taps_per_s:.2f} per second), {report.changed} changed the "
                  f"screen, {report.failed_taps} failed (browser restarted {browser.restarts} times)")
    console.print(f"the fence refused {len(report.refused)} requests (outside the corpus), e.g. "
                  f"{', '.join(sorted(set(report.refused))[:3]) or 'none'}")
    data = store.load()
    console.print(f"{out}: {len(data.labels)} crops, {data.labels.mean():.0%} labelled tappable; labels agree with "
                  f"the DOM (links, controls, click handlers) on {(data.labels == data.reference).mean():.0%}")
    return store


def run_learning(store: CropStore, devices: int, held_out: int, settings: LearnSettings, out: Path,
                 console: Console) -> Curve:
    """Deal the crawled apps, learn with progress, and write the model and the curve into the run folder ``out``."""
    from pocketlearn.apps.ui.corpus import App, split_apps
    from pocketlearn.apps.ui.learn import INPUTS, learn
    from pocketlearn.apps.ui.report import write_curve
    from pocketlearn.checkpoint import save_checkpoint
    from pocketlearn.progress import working

    names = sorted({p.app for p in store.pages()})
    dealt, evaluation = split_apps([App(n, store.root) for n in names], devices, held_out)
    device_apps, tested = [[a.name for a in d] for d in dealt], [a.name for a in evaluation]
    console.print(f"devices' apps: {device_apps}; held out: {tested}")
    with working(console, "learning") as status:
        curve = learn(store, device_apps, tested, settings, on_stage=lambda r: status.update(
            f"stage {r.stage}/{settings.stages}: F1 {r.federated.f1:.3f}"))
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "model.pt", {"model": curve.model, "model_name": "ui-cnn", "inputs": INPUTS})
    write_curve(out, curve, devices_apps=device_apps, held_out=tested)
    console.print(curve_table(curve))
    rule = curve.rule
    console.print(f"no-learning rule (the DOM: a link or form control): F1 {rule.f1:.3f}, precision "
                  f"{rule.precision:.3f}, recall {rule.recall:.3f}")
    console.print(f"{out}: model.pt (`pocketlearn ui predict PAGE --model {out / 'model.pt'}`) and ui-curve.json "
                  f"(`pocketlearn report {out}`)")
    return curve


def curve_table(curve: Curve) -> object:
    from rich.table import Table

    table = Table("stage", "crops", "F1 fed.", "F1 alone", "F1 pooled", "AUC fed.", "method", "B/client-round",
                  title="Tappability on held-out apps, from pixels")
    for r in curve.stages:
        table.add_row(str(r.stage), str(r.crops_seen), f"{r.federated.f1:.3f}", f"{r.alone.f1:.3f}",
                      f"{r.pooled.f1:.3f}", f"{r.federated.auc:.3f}", r.method, f"{r.bytes_per_client_round:,.0f}")
    return table
