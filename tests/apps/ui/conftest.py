"""Fixture apps for the UI learner: small pages whose every element's effect is known, and a browser to tap them."""

import socket
import threading

import pytest

from pocketlearn.apps.ui.corpus import App

STYLE = "body{margin:0;font:16px sans-serif} .at{position:absolute;width:160px;height:40px;margin:0}"
ELEMENTS = {  # id -> (element, left, top): a tap on the first four changes the screen, on the last nothing
    "button": ("<button id=button class=at style='{at}' "
               "onclick=\"document.getElementById('out').textContent='pressed'\">Press</button>", 20, 20),
    "link": ("<a id=link class=at style='{at}' href=page2.html>Next page</a>", 220, 20),
    "toggle": ("<label id=toggle class=at style='{at}'><input type=checkbox "
               "onchange=\"document.body.style.background=this.checked?'#222':'#fff'\"> Dark</label>", 420, 20),
    "handler": ("<div id=handler class=at style='{at};background:#eee'>Show more</div>", 620, 20),
    "lookalike": ("<span id=lookalike class=at style='{at};background:#36c;color:#fff'>Looks like a button</span>",
                  20, 120),
}
SCRIPT = ("<script>document.getElementById('handler').addEventListener('click', () => "
          "document.getElementById('out').textContent = 'more, and more, and more');"
          "document.body.addEventListener('click', () => {});</script>")  # delegation, as frameworks do


def page(body: str, title: str = "Fixture") -> str:
    return f"<!doctype html><html><head><title>{title}</title><style>{STYLE}</style></head><body>{body}</body></html>"


def write_app(root, extra: str = "", pages: int = 2, name: str = "fixture") -> App:
    """An app of ``pages`` pages: the five known elements (and ``extra``) on the first, plain text after."""
    root.mkdir(parents=True, exist_ok=True)
    elements = "".join(html.replace("{at}", f"left:{left}px;top:{top}px") for html, left, top in ELEMENTS.values())
    out = "<p id=out class=at style='left:20px;top:220px;width:400px'>waiting</p>"
    (root / "index.html").write_text(page(elements + out + extra + SCRIPT))
    for i in range(2, pages + 1):
        nxt = f"<a href=page{i + 1}.html>on</a>" if i < pages else ""
        (root / f"page{i}.html").write_text(page(f"<div style='width:600px'><h1>Page {i}</h1><p>Plain text, "
                                                 f"nothing to tap.</p>{nxt}</div>"))
    return App(name, root, "index.html")


@pytest.fixture
def fixture_app(tmp_path):
    return write_app(tmp_path / "app")


@pytest.fixture
def listener():
    """A TCP port on 127.0.0.1 that the crawler did not start, counting every connection made to it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    seen = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            seen.append(conn)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    stop.set()
    thread.join()
    server.close()
