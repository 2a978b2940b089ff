"""The crawler and labeler on pages whose every element's effect is known; the fence; crashes and kills."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("playwright")
if not any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")):
    pytest.skip("no Chromium here (Debian: apt install chromium)", allow_module_level=True)

from pocketlearn.apps.ui.browser import Browser
from pocketlearn.apps.ui.crawler import CrawlSettings, PageTapper, crawl
from pocketlearn.apps.ui.dataset import CropStore
from pocketlearn.apps.ui.fence import Fence
from pocketlearn.apps.ui.labeler import Candidate
from tests.apps.ui.conftest import ELEMENTS, write_app

ALL = CrawlSettings(pages_per_app=3, taps_per_page=100, crop_size=32)


def _by_element(store):
    """Each fixture element's (label, reference, control), found by its box's corner."""
    data = store.load()
    at = {(round(float(x)), round(float(y))): (bool(lab), bool(ref), bool(ctl))
          for (x, y, _, _), lab, ref, ctl in zip(data.boxes, data.labels, data.reference, data.control, strict=True)}
    return {key: at[(left, top)] for key, (_, left, top) in ELEMENTS.items()}, data


def test_each_tap_is_labelled_by_what_it_did_to_the_screen(fixture_app, tmp_path):
    store = CropStore(tmp_path / "crops")
    with Browser(Fence([fixture_app.root])) as browser:
        report = crawl([fixture_app], store, browser, ALL)
    labels, data = _by_element(store)
    # (label, reference, control): the handler is tappable, but no link or form control (the rule misses it);
    # the page's listener on <body> (delegation) marks nothing
    assert labels == {"button": (True, True, True), "link": (True, True, True), "toggle": (True, True, True),
                      "handler": (True, True, False), "lookalike": (False, False, False)}
    assert report.screens == 2 and report.failed_taps == 0 and report.taps == len(data.labels)
    assert data.crops.shape[1:] == (32, 32, 3) and data.crops.dtype == np.uint8
    assert not data.labels[~data.reference].any()  # the plain text on both pages did nothing when tapped


SAVED_THEME = ("<button id=theme class=at style='left:220px;top:120px' onclick=\"localStorage.setItem('theme', 'dark');"
               "document.body.style.background='#222'\">Dark theme</button>"
               "<script>if (localStorage.getItem('theme')) document.body.style.background = '#222';</script>")


def test_the_reload_that_undoes_a_tap_also_forgets_what_the_tap_saved_in_the_pages_storage(tmp_path):
    app = write_app(tmp_path / "app", extra=SAVED_THEME)  # the page applies a saved theme as it loads
    with Browser(Fence([app.root])) as browser:
        tapper = PageTapper(browser, ALL)
        first = tapper.load(app.url)
        assert tapper.tap(app.url, Candidate(220, 120, 160, 40, "button", True))  # dark now, and saved
        assert np.array_equal(tapper.load(app.url), first)  # every later screen sees the app as it first was


def test_the_fence_refuses_outside_addresses_before_any_request_leaves(tmp_path, listener):
    port, connections = listener
    outside = (f"<a href='http://127.0.0.1:{port}/' class=at style='left:20px;top:300px'>local, not ours</a>"
               "<a href='http://example.com/' class=at style='left:220px;top:300px'>the internet</a>"
               f"<img src='http://127.0.0.1:{port}/pixel.png' style='position:absolute;left:420px;top:300px'>"
               "<a href='file:///etc/hostname' class=at style='left:620px;top:300px'>a file outside</a>")
    app = write_app(tmp_path / "app", extra=outside)
    fence = Fence([app.root])
    with Browser(fence) as browser:
        crawl([app], CropStore(tmp_path / "crops"), browser, ALL)
    assert f"http://127.0.0.1:{port}/" in fence.refused
    assert {"http://example.com/", "https://example.com/"} & set(fence.refused)  # (Chromium may upgrade to https)
    assert f"http://127.0.0.1:{port}/pixel.png" in fence.refused and "file:///etc/hostname" in fence.refused
    assert connections == []  # nothing reached a server the crawler did not start


def test_fence_rules():
    fence = Fence(["/srv/app"], ports=[8123])
    assert fence.allows("file:///srv/app/index.html") and fence.allows("file:///srv/app/a/b.css")
    assert not fence.allows("file:///srv/app/../secret.txt") and not fence.allows("file:///srv/apple/x.html")
    assert not fence.allows("file://host/srv/app/index.html")
    assert fence.allows("http://127.0.0.1:8123/lab") and not fence.allows("http://127.0.0.1:8124/")
    assert not fence.allows("http://localhost:8123/") and not fence.allows("https://example.com/")
    assert fence.allows("about:blank") and fence.allows("data:text/html,hi") and not fence.allows("ftp://x/")


def test_a_hung_page_is_skipped_and_a_crashed_browser_restarted(tmp_path):
    hang = "<button class=at style='left:20px;top:300px' onclick='while (true) {}'>Freeze</button>"
    app, other = write_app(tmp_path / "app", extra=hang), write_app(tmp_path / "other", name="other")
    store = CropStore(tmp_path / "crops")
    with Browser(Fence([app.root, other.root]), timeout_s=2.0) as browser:
        report = crawl([app], store, browser, ALL)
        os.kill(browser.pid, signal.SIGKILL)  # a crash between crawls: the next one restarts it
        second = crawl([other], store, browser, ALL)
    assert report.failed_taps == 1 and report.screens == 2 and len(report.errors) == 1
    assert second.screens == 2 and second.taps > 0 and browser.restarts == 2
    labels, _ = _by_element(CropStore(tmp_path / "crops"))
    assert labels["button"] == (True, True, True)


CRAWL = """
import sys
from pocketlearn.apps.ui.browser import Browser
from pocketlearn.apps.ui.corpus import App
from pocketlearn.apps.ui.crawler import CrawlSettings, PageTapper, crawl
from pocketlearn.apps.ui.dataset import CropStore
from pocketlearn.apps.ui.fence import Fence
from pocketlearn.apps.ui.labeler import Candidate
from pathlib import Path
app = App("fixture", Path(sys.argv[1]), "index.html")
with Browser(Fence([app.root])) as b:
    r = crawl([app], CropStore(sys.argv[2]), b, CrawlSettings(pages_per_app=6, taps_per_page=100, crop_size=32))
print(r.screens, r.skipped_screens)
"""


def test_a_killed_crawl_resumes_and_loses_nothing(tmp_path):
    app = write_app(tmp_path / "app", pages=6)
    straight = CropStore(tmp_path / "straight")
    with Browser(Fence([app.root])) as browser:
        crawl([app], straight, browser, CrawlSettings(pages_per_app=6, taps_per_page=100, crop_size=32))
    store = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", CRAWL, str(app.root), str(store)], start_new_session=True)
    deadline = time.monotonic() + 60
    while not (store / "fixture").is_dir() or len(list((store / "fixture").glob("*.npz"))) < 2:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the crawler and its browser, mid-page
    proc.wait()
    done = len(list((store / "fixture").glob("*.npz")))
    rerun = subprocess.run([sys.executable, "-c", CRAWL, str(app.root), str(store)], capture_output=True, text=True,
                           check=True)
    pages, skipped = map(int, rerun.stdout.split())
    assert skipped == done and pages + skipped == 6
    resumed, full = CropStore(store).load(), straight.load()
    assert np.array_equal(resumed.labels, full.labels) and np.array_equal(resumed.crops, full.crops)


def test_a_tiny_never_ending_federated_run_from_crawl_to_scores(tmp_path):
    from typer.testing import CliRunner

    from pocketlearn.cli.main import app as cli

    apps = [write_app(tmp_path / name, name=name) for name in ("north", "south", "held")]
    with Browser(Fence([a.root for a in apps])) as browser:
        crawl(apps, CropStore(tmp_path / "crops"), browser, ALL)
    model = tmp_path / "run" / "model.pt"
    result = CliRunner().invoke(cli, ["ui", "learn", "--crops", str(tmp_path / "crops"), "--devices", "2",
                                      "--held-out", "1", "--stages", "2", "--rounds", "2", "--replay", "16",
                                      "--inverted", "0.25", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "held out: ['" in result.output and "no-learning rule" in result.output
    assert "stage 2/2: F1" in result.output
    shown = tmp_path / "shown.png"
    result = CliRunner().invoke(cli, ["ui", "predict", str(apps[0].root / "index.html"), "--model", str(model),
                                      "--out", str(shown)])
    assert result.exit_code == 0, result.output
    assert f"{len(ELEMENTS) + 2} elements" in result.output  # the five, the checkbox and the status line
    from PIL import Image

    assert Image.open(shown).size == (1024, 768)
    plotted = CliRunner().invoke(cli, ["report", str(tmp_path / "run")])
    assert plotted.exit_code == 0 and Image.open(tmp_path / "run" / "ui-curve.png").size[0] > 0


def test_one_ui_job_crawls_and_learns_into_its_run_folder(tmp_path):
    from typer.testing import CliRunner

    from pocketlearn.apps.ui.corpus import debian_apps
    from pocketlearn.cli.main import app as cli

    installed = [a.name for a in debian_apps()][:3]
    if len(installed) < 3:
        pytest.skip("needs three Debian documentation packages (docs/ui.md)")
    job = tmp_path / "job.toml"
    job.write_text(f'name = "small"\n[crawl]\napps = {installed}\npages = 1\nscreens = 1\ntaps = 6\n'
                   "[learn]\ndevices = 2\nheld_out = 1\nstages = 1\nrounds = 2\n")
    result = CliRunner().invoke(cli, ["ui", "run", str(job), "--runs", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "small"
    assert (run / "model.pt").is_file() and (run / "ui-curve.json").is_file()
    assert len(list((run / "crops").rglob("*.npz"))) == 3
    again = CliRunner().invoke(cli, ["ui", "run", str(job), "--runs", str(tmp_path / "runs")])
    assert again.exit_code == 0 and "0 screens crawled (3 already in" in again.output  # resumed, nothing redone
