"""Local web apps: served on 127.0.0.1, reached only through the fence's proxy, started and stopped by the crawl."""

import functools
import http.server
import shutil
import socket
import threading

import pytest

from pocketlearn.apps.ui.servers import local_apps
from pocketlearn.errors import ConfigError
from tests.apps.ui.conftest import page

pytest.importorskip("playwright")
if not any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")):
    pytest.skip("no Chromium here (Debian: apt install chromium)", allow_module_level=True)

from pocketlearn.apps.ui.browser import Browser
from pocketlearn.apps.ui.corpus import App
from pocketlearn.apps.ui.crawler import CrawlSettings, crawl
from pocketlearn.apps.ui.dataset import CropStore
from pocketlearn.apps.ui.fence import Fence

FEW = CrawlSettings(pages_per_app=2, screens=1, taps_per_page=100, crop_size=32)


@pytest.fixture
def served(tmp_path):
    """A local web server the crawler started (its port is admitted), counting the requests it answers."""
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tmp_path, server.server_address[1], requests
    server.shutdown()
    server.server_close()


def test_the_crawlers_own_server_is_reached_through_the_proxy_and_nothing_else(served, listener, tmp_path):
    root, port, requests = served
    foreign, connections = listener
    (root / "index.html").write_text(page(
        f"<a href='http://127.0.0.1:{foreign}/' style='position:absolute;left:20px;top:20px'>local, not ours</a>"
        "<a href='two.html' style='position:absolute;left:220px;top:20px'>the next view</a>"
        f"<img src='http://127.0.0.1:{foreign}/pixel.png' style='position:absolute;left:420px;top:20px'>"))
    (root / "two.html").write_text(page("<p>Plain text, nothing to tap.</p>"))
    app = App("served", root, "index.html", base=f"http://127.0.0.1:{port}/", routes=("index.html", "two.html"))
    fence = Fence([], ports=[port])
    store = CropStore(tmp_path / "crops")
    with Browser(fence) as browser:
        report = crawl([app], store, browser, FEW)
    assert report.screens == 2 and report.taps >= 2 and report.failed_taps == 0
    assert "/index.html" in requests and "/two.html" in requests  # the admitted server answered
    assert f"http://127.0.0.1:{foreign}/" in fence.refused and f"http://127.0.0.1:{foreign}/pixel.png" in fence.refused
    assert connections == []  # hovered, tapped and embedded: nothing reached the server the crawler did not start
    assert {p.url for p in store.pages()} == {"http://127.0.0.1/index.html", "http://127.0.0.1/two.html"}  # no port


def test_unknown_local_apps_are_named():
    with pytest.raises(ConfigError, match="unknown local apps.*choose from"), local_apps(["jupyter"], None):
        pass


@pytest.mark.parametrize(("name", "module", "made"), [("tensorboard", "tensorboard", "sgd-0.1"),
                                                      ("optuna", "optuna_dashboard", "studies.sqlite3"),
                                                      ("datasette", "datasette", "experiments.db")])
def test_a_local_app_is_started_with_its_content_crawled_and_stopped(tmp_path, name, module, made):
    pytest.importorskip(module)
    with local_apps([name], tmp_path) as (app,):
        port = int(app.base.rsplit(":", 1)[1].strip("/"))
        with Browser(Fence([], ports=[port])) as browser:
            report = crawl([app], CropStore(tmp_path / "crops"), browser,
                           CrawlSettings(pages_per_app=1, screens=1, taps_per_page=6, crop_size=32))
    assert report.screens == 1 and report.taps >= 3, report.errors
    assert (tmp_path / name / "content" / made).exists()
    with pytest.raises(OSError):  # stopped with the crawl
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
