"""What the crawler's browser may load: the corpus's own files and the servers the crawler started, nothing else.

Enforced three times. Every request (page, image, script, navigation, ``file://`` included) passes
:meth:`Fence.allows` in a route handler before Chromium sends it. Below that, Chromium opens connections of its
own that no handler sees (it preconnects to a hovered link's origin), so every connection goes through
:class:`FenceProxy`, a proxy on 127.0.0.1 that connects only to the crawler's own servers' ports and answers
anything else itself, and Chromium resolves no name at all (``--host-resolver-rules``; 127.0.0.1 is left to
it, the proxy's own address). A tapped or hovered link to an outside address, or to a local server the crawler
did not start, fails without a packet reaching it.
"""

from __future__ import annotations

import os
import selectors
import socket
import socketserver
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

# Chromium's own pages (about:blank, data: URLs of the page itself) carry no request off the machine
INTERNAL_SCHEMES = ("about", "data", "blob", "chrome-error")
# no name resolves (but the proxy's address): an outside address fails inside Chromium, before DNS
CHROMIUM_ARGS = ("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-default-browser-check",
                 "--disable-features=Translate,OptimizationHints,MediaRouter,NetworkTimeServiceQuerying")


@dataclass
class Fence:
    """The folders (``file://``) and the 127.0.0.1 ports (``http://``) a crawl may load; the refused URLs, in order."""

    roots: Sequence[Path]
    ports: Sequence[int] = ()
    refused: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.roots = [Path(os.path.abspath(r)) for r in self.roots]

    def allows(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme in INTERNAL_SCHEMES:
            return True
        if parts.scheme == "file":
            path = Path(os.path.normpath(unquote(parts.path)))  # "..": normalized before the prefix test
            return not parts.netloc and any(path == r or r in path.parents for r in self.roots)
        if parts.scheme in ("http", "https", "ws"):
            try:
                port = parts.port
            except ValueError:
                return False
            return parts.hostname == "127.0.0.1" and port in self.ports
        return False

    def install(self, page: Any) -> None:
        """Route every request of ``page`` through :meth:`allows`; refused ones fail as blocked by the client."""

        def route(handle: Any) -> None:
            url = handle.request.url
            if self.allows(url):
                handle.continue_()
            else:
                self.refused.append(url)
                handle.abort("blockedbyclient")

        page.route("**/*", route)


MAX_HEAD = 64 << 10  # bytes of a request's line and headers
IDLE_S = 30.0  # a proxied connection with nothing to carry for this long is closed
HOP_BY_HOP = (b"connection:", b"proxy-connection:", b"keep-alive:")  # replaced by "Connection: close"


class FenceProxy:
    """An HTTP proxy on 127.0.0.1 (``url``) that connects only where ``fence`` allows: the crawler's own servers.

    One request per client connection (forwarded with ``Connection: close``), so a connection the browser reuses
    cannot carry a later request past the check; ``CONNECT`` (WebSockets) is a tunnel to an allowed port only.
    """

    def __init__(self, fence: Fence):
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        self.fence = fence
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(IDLE_S)
        head = _read_head(client)
        if head is None:
            return
        request, _, body = head.partition(b"\r\n\r\n")
        line, *fields = request.split(b"\r\n")
        try:
            method, target, version = line.decode("latin-1").split(" ")
            url = f"http://{target}/" if method == "CONNECT" else target
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port or 80
        except ValueError:
            _answer(client, "400 Bad Request")
            return
        if host is None or not self.fence.allows(f"http://{host}:{port}/"):
            self.fence.refused.append(f"CONNECT {target}" if method == "CONNECT" else url)
            _answer(client, "403 Forbidden")
            return
        try:
            upstream = socket.create_connection((host, port), timeout=IDLE_S)
        except OSError:  # the crawler's server is down (a crashed app): the browser sees a failed load
            _answer(client, "502 Bad Gateway")
            return
        with upstream:
            if method == "CONNECT":
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                upstream.sendall(body)
            else:
                origin_form = f"{method} {parts.path or '/'}{'?' + parts.query if parts.query else ''} {version}"
                kept = [f for f in fields if not f.lower().startswith(HOP_BY_HOP)]
                upstream.sendall(b"\r\n".join([origin_form.encode("latin-1"), *kept, b"Connection: close", b"", body]))
            _pump(client, upstream)


def _answer(client: socket.socket, status: str) -> None:
    """The proxy's own empty reply (nothing was forwarded)."""
    client.sendall(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())


def _read_head(conn: socket.socket) -> bytes | None:
    """A request's line and headers (and whatever of its body came with them), or None if it never ends."""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = conn.recv(65536)
        except OSError:
            return None
        if not chunk or len(data) + len(chunk) > MAX_HEAD:
            return None
        data += chunk
    return data


def _pump(client: socket.socket, upstream: socket.socket) -> None:
    """Carry bytes both ways until either side closes or both stay idle for IDLE_S."""
    with selectors.DefaultSelector() as selector:
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        while events := selector.select(IDLE_S):
            for key, _ in events:
                try:
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
                except OSError:
                    return
