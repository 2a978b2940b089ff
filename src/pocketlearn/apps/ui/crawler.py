"""Tap the elements of an app's pages, label each tap from the screens before and after, keep the crops.

Per screen of a page (the page scrolled by ``screens`` viewports): load it with the mouse away, screenshot it
(the crops come from this screen, with no hover style), list the candidates, tap a seeded sample of them: hover,
screenshot, click, wait ``settle_s``, screenshot, label (:mod:`~pocketlearn.apps.ui.labeler`). A tap that changed
something is undone by loading the page again, with the origin's storage and cookies cleared (a theme toggle
saved there would otherwise restyle every later screen). Every browser action has a time limit; a browser that
hangs or crashes is restarted and the tap is skipped. Pages are visited breadth first from the app's start page,
inside the app's folder.

The sample is half elements the DOM calls interactive and half not (as far as the screen has them): documentation
is mostly links, and a learner shown 90% tappable elements learns the prior. The DOM chooses what is tapped,
never how it is labelled.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urldefrag

import numpy as np

from pocketlearn.apps.ui.browser import VIEWPORT, Browser
from pocketlearn.apps.ui.corpus import App
from pocketlearn.apps.ui.dataset import CropStore, PageCrops, page_key
from pocketlearn.apps.ui.labeler import Candidate, candidates, crop, decode, screen_changed
from pocketlearn.errors import ConfigError

LINKS_JS = "() => Array.from(document.querySelectorAll('a[href]'), a => a.href)"
# scroll down by y; false if the page is too short to show anything new there
SCROLL_JS = ("(y) => { if (document.documentElement.scrollHeight <= y + 40) return false; "
             "window.scrollTo(0, y); return true; }")


@dataclass(frozen=True)
class CrawlSettings:
    pages_per_app: int = 4
    screens: int = 2  # screens per page: the top, then scrolled down by a viewport each
    taps_per_page: int = 24  # per screen
    settle_s: float = 0.2  # after a click, before the "after" screenshot
    hover_s: float = 0.05  # after moving onto the element, before the "before" screenshot
    timeout_s: float = 5.0  # the time limit of each browser action
    crop_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.pages_per_app, self.screens, self.taps_per_page, self.crop_size) < 1 or self.timeout_s <= 0:
            raise ConfigError(f"crawl settings need pages, taps and crop size >= 1 and a positive timeout: {self}")


@dataclass
class CrawlReport:
    screens: int = 0  # tapped and stored
    skipped_screens: int = 0  # already in the store (a resumed crawl)
    taps: int = 0
    changed: int = 0
    failed_taps: int = 0  # the browser hung or crashed: restarted, tap skipped
    seconds: float = 0.0
    refused: list[str] = field(default_factory=list)  # URLs the fence refused
    errors: list[str] = field(default_factory=list)  # why each failed tap failed

    @property
    def taps_per_s(self) -> float:
        return self.taps / self.seconds if self.seconds else 0.0


def app_pages(browser: Browser, app: App, limit: int, errors: list[str]) -> list[str]:
    """Up to ``limit`` pages of ``app``, breadth first from its start page (each loaded once to list its links)."""
    if app.routes:
        return [app.base + route for route in app.routes[:limit]]
    found: list[str] = []
    queue, seen = deque([app.url]), {app.url}
    while queue and len(found) < limit:
        url = queue.popleft()
        links = None
        for _ in range(2):  # a second try in a fresh browser: the last one may have crashed before this page
            try:
                with browser.deadline():
                    browser.page.goto(url, wait_until="load")
                    links = browser.page.evaluate(LINKS_JS)
                break
            except Exception as err:  # noqa: BLE001 - a page that does not load is not crawled
                errors.append(_error(url, err))
                browser.restart()
        if links is None:
            continue
        found.append(url)
        for link in links:
            link = urldefrag(link).url
            if link.startswith(app.prefix) and link.endswith((".html", ".htm")) and link not in seen:
                seen.add(link)
                queue.append(link)
    return found


class PageTapper:
    """Taps a page's candidates one by one, restoring the page after a tap that changed it."""

    def __init__(self, browser: Browser, settings: CrawlSettings):
        self.browser, self.settings = browser, settings

    @property
    def page(self):  # noqa: ANN201 - Playwright's Page (replaced when the browser restarts)
        return self.browser.page

    def screen(self) -> np.ndarray:
        """A screenshot; one retry once loading settles (a late navigation cannot be captured mid-way)."""
        try:
            return decode(self.page.screenshot())
        except Exception:  # noqa: BLE001 - Playwright's Error: the page is between two documents
            self.page.wait_for_load_state("load")
            return decode(self.page.screenshot())

    def load(self, url: str, screen: int = 0) -> np.ndarray | None:
        """The page's ``screen`` as first seen (mouse away): where the crops come from (None: the page is shorter).

        It loads as a first visit would (no cookies, empty storage), whatever the taps before saved.
        A served page may fetch its content after it loads, so it is read once the network is idle; a route of a
        single-page app (a fragment) is loaded into a blank page, since going to the URL it is already at would
        not undo what a tap changed.
        """
        served = url.startswith("http")
        self.page.context.clear_cookies()  # and the storage, at each document's start (browser.FRESH_STORAGE)
        if served and "#" in url:
            self.page.goto("about:blank")
        self.page.goto(url, wait_until="networkidle" if served else "load")
        self.page.mouse.move(0, 0)
        if screen and not self.page.evaluate(SCROLL_JS, screen * VIEWPORT[1]):
            return None
        time.sleep(self.settings.settle_s)
        return self.screen()

    def tap(self, url: str, c: Candidate) -> bool:
        """Whether tapping ``c`` changed anything (if it did, the page needs a reload before the next tap)."""
        x, y = c.centre
        self.page.mouse.move(x, y)
        time.sleep(self.settings.hover_s)
        before, popups = self.screen(), len(self.browser.popups)
        self.page.mouse.click(x, y)
        time.sleep(self.settings.settle_s)
        opened = len(self.browser.popups) > popups
        for popup in self.browser.popups[popups:]:
            popup.close()
        del self.browser.popups[popups:]
        if opened or self.page.url != url:  # navigated (a refused page has no screen to compare)
            return True
        return screen_changed(before, self.screen(), c)

    def run(self, app: App, url: str, number: int, rng: np.random.Generator, report: CrawlReport
            ) -> PageCrops | None:
        """Tap screen ``number`` of the page at ``url`` (None: the page has no such screen)."""
        t0 = time.perf_counter()
        with self.browser.deadline():
            screen = self.load(url, number)
            if screen is None:
                return None
            listed = candidates(self.page)
        chosen = balanced_sample(listed, self.settings.taps_per_page, rng)
        kept: list[tuple[Candidate, bool]] = []
        dirty = False
        for i in chosen:
            c = listed[int(i)]
            try:
                with self.browser.deadline():
                    if dirty:
                        self.load(url, number)
                    dirty = self.tap(url, c)
            except Exception as err:  # noqa: BLE001 - a hung or crashed browser (Playwright raises its own errors)
                report.failed_taps += 1
                report.errors.append(_error(url, err))
                self.browser.restart()
                dirty = True
                continue
            kept.append((c, dirty))
        report.taps += len(kept)
        report.changed += sum(changed for _, changed in kept)
        size = self.settings.crop_size
        crops = np.stack([crop(screen, c, size) for c, _ in kept]) if kept else np.zeros((0, size, size, 3), np.uint8)
        return PageCrops(app.name, screen_id(app.page_name(url), number), crops, np.array([ch for _, ch in kept], bool),
                         np.array([c.reference for c, _ in kept], bool), np.array([c.control for c, _ in kept], bool),
                         np.array([[c.x, c.y, c.w, c.h] for c, _ in kept], np.float32).reshape(-1, 4),
                         time.perf_counter() - t0)


def crawl(apps: Sequence[App], store: CropStore, browser: Browser, settings: CrawlSettings = CrawlSettings(),
          on_page: Callable[[App, str, CrawlReport], None] | None = None) -> CrawlReport:
    """Crawl ``apps`` into ``store``; screens already there are skipped (a killed crawl resumes)."""
    report, t0 = CrawlReport(), time.perf_counter()
    tapper = PageTapper(browser, settings)
    for app in apps:
        for url in app_pages(browser, app, settings.pages_per_app, report.errors):
            for number in range(settings.screens):
                if not _crawl_screen(tapper, store, app, url, number, report):
                    break
            if on_page:
                on_page(app, url, report)
    report.seconds = time.perf_counter() - t0
    report.refused = list(browser.fence.refused)
    return report


def _crawl_screen(tapper: PageTapper, store: CropStore, app: App, url: str, number: int,
                  report: CrawlReport) -> bool:
    """Tap one screen into the store; False once the page has no further screen."""
    key = screen_id(app.page_name(url), number)
    if store.has(app.name, key):
        report.skipped_screens += 1
        return True
    rng = np.random.default_rng([tapper.settings.seed, int(page_key(app.name, key), 16)])  # the screen's own draw
    try:
        page = tapper.run(app, url, number, rng, report)
    except Exception as err:  # noqa: BLE001 - the page itself would not load: restart, leave it for a rerun
        report.errors.append(_error(url, err))
        tapper.browser.restart()
        return True
    if page is None:
        return False
    store.add(page)
    report.screens += 1
    return True


def screen_id(url: str, number: int) -> str:
    """How a screen is named in the store: the page's URL, and which screen below the top it is."""
    return url if number == 0 else f"{url} (screen {number + 1})"


def balanced_sample(listed: Sequence[Candidate], n: int, rng: np.random.Generator) -> list[int]:
    """Up to ``n`` candidates: half that the DOM calls interactive and half not, where the screen has enough."""
    yes = [i for i, c in enumerate(listed) if c.reference]
    no = [i for i, c in enumerate(listed) if not c.reference]
    take_yes = min(len(yes), max(n // 2, n - len(no)))
    take_no = min(len(no), n - take_yes)
    return sorted(rng.permutation(yes)[:take_yes].tolist() + rng.permutation(no)[:take_no].tolist())


def _error(url: str, err: Exception) -> str:
    return f"{url}: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
