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
    taps: Annotated[int, typer.Option(min=1, help="Taps per page (a seeded sample of its elements).")] = 24,
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
    settings = CrawlSettings(pages_per_app=pages, taps_per_page=taps, timeout_s=timeout, seed=seed)
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
