"""What the crawler's browser may load: the corpus's own files and the servers the crawler started, nothing else.

Enforced inside the browser, twice: every request (page, image, script, navigation, ``file://`` included) passes
:meth:`Fence.allows` in a route handler before Chromium sends it, and Chromium resolves no address at all but
``localhost`` (``--host-resolver-rules``; 127.0.0.1 included), so a tapped link to an outside address fails before
any packet leaves the machine. The second layer matters: Chromium preconnects (TCP) to a hovered link's origin
without a request the route handler would see. It also keeps the crawler's own servers out until they are
reached through a connection-level fence (a proxy that knows their ports): ``ports`` is ready for that.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

# Chromium's own pages (about:blank, data: URLs of the page itself) carry no request off the machine
INTERNAL_SCHEMES = ("about", "data", "blob", "chrome-error")
# no name resolves: an address that is not a literal IP fails inside Chromium, before DNS
CHROMIUM_ARGS = ("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost", "--disable-background-networking",
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
