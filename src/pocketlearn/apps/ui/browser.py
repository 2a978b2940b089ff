"""The system's headless Chromium, driven by Playwright, fenced, and restarted when it hangs or crashes."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psutil

from pocketlearn.apps.ui.fence import CHROMIUM_ARGS, Fence, FenceProxy
from pocketlearn.errors import ConfigError
from pocketlearn.extras import require

VIEWPORT = (1024, 768)  # CSS pixels, scale 1: the screen every tap, crop and screenshot is measured on
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")

# Marks every element that gets a click-like listener, before the page's own scripts run: the DOM reference
# that labels are compared with (a tap's effect is judged from pixels only; this is not used to label). Listeners
# on <html> and <body> are left out: frameworks delegate every event there (Angular, React), and through
# closest() they would mark every element of the page.
LISTENER_PROBE = """
(() => {
  const kinds = new Set(["click", "mousedown", "mouseup", "pointerdown", "pointerup", "touchstart"]);
  const add = EventTarget.prototype.addEventListener;
  EventTarget.prototype.addEventListener = function (type, ...rest) {
    if (kinds.has(type) && this instanceof Element && this !== document.documentElement && this !== document.body)
      this.setAttribute("data-pl-listener", "1");
    return add.call(this, type, ...rest);
  };
})();
"""


# Every document starts from the app's own defaults: what a page keeps in its origin's storage (a theme toggle,
# a dismissed banner) would outlive the reload that undoes a tap, and change every later screen of the crawl.
# All file:// pages share one origin, so one app's saved theme could also restyle another app. Cookies are
# cleared by the crawler before each load (PageTapper.load).
FRESH_STORAGE = "(() => { try { localStorage.clear(); sessionStorage.clear(); } catch (e) {} })();"


def _chromium_processes() -> list[psutil.Process]:
    """The Chromium processes this process started (through Playwright's driver), alive now."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "chrom" in proc.name().lower():
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def chromium_path() -> str:
    """The Chromium to drive: ``$POCKETLEARN_CHROMIUM``, else one on PATH (Debian: ``apt install chromium``)."""
    chosen = os.environ.get("POCKETLEARN_CHROMIUM")
    if chosen:
        if not os.access(chosen, os.X_OK):
            raise ConfigError(f"POCKETLEARN_CHROMIUM = {chosen!r} is not an executable file")
        return chosen
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return found
    raise ConfigError("no Chromium found for the UI crawler: install it (Debian: apt install chromium) or point "
                      "POCKETLEARN_CHROMIUM at its executable; Playwright's own browser download is not used")


@dataclass
class Browser:
    """One headless Chromium with one fenced page; :meth:`restart` replaces both (after a hang or a crash)."""

    fence: Fence
    timeout_s: float = 5.0  # any single browser action (load, tap, screenshot) longer than this fails
    restarts: int = 0

    def __post_init__(self) -> None:
        require("playwright")
        from playwright.sync_api import sync_playwright

        self._driver = sync_playwright().start()
        self._proxy = FenceProxy(self.fence)  # every connection Chromium opens goes through it (loopback too)
        self._browser: Any = None
        self.page: Any = None
        self._launch()

    def _launch(self) -> None:
        before = {p.pid for p in _chromium_processes()}
        self._browser = self._driver.chromium.launch(executable_path=chromium_path(), args=list(CHROMIUM_ARGS),
                                                     proxy={"server": self._proxy.url}, timeout=30_000)
        ours = [p for p in _chromium_processes() if p.pid not in before]
        self.pid = next((p.pid for p in ours if p.ppid() not in {q.pid for q in ours}), None)
        context = self._browser.new_context(viewport={"width": VIEWPORT[0], "height": VIEWPORT[1]},
                                            device_scale_factor=1, service_workers="block")
        context.add_init_script(FRESH_STORAGE)
        context.add_init_script(LISTENER_PROBE)
        context.set_default_timeout(self.timeout_s * 1000)
        context.set_default_navigation_timeout(self.timeout_s * 1000)
        self.fence.install(context)
        self.page = context.new_page()
        self.popups: list[Any] = []
        context.on("page", lambda popup: self.popups.append(popup))  # a tap that opened a window changed something

    @contextmanager
    def deadline(self) -> Iterator[None]:
        """Kill the browser if the block takes longer than ``timeout_s``.

        A page's script that never yields blocks even a mouse event; the pending call then fails, and the caller
        restarts the browser.
        """
        timer = threading.Timer(self.timeout_s, self.kill)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def kill(self) -> None:
        """SIGKILL this browser's processes (its main process and every child of it)."""
        if self.pid is None:
            return
        try:
            main = psutil.Process(self.pid)
            for proc in [*main.children(recursive=True), main]:
                proc.kill()
        except psutil.NoSuchProcess:
            pass

    def restart(self) -> None:
        self.restarts += 1
        try:
            self._browser.close()
        except Exception:  # noqa: BLE001 - a crashed or hung browser may not close cleanly; it is replaced anyway
            pass
        self._launch()

    def close(self) -> None:
        try:
            self._browser.close()
        finally:
            self._driver.stop()
            self._proxy.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
