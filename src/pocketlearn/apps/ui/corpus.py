"""The interfaces the crawler may tap: HTML documentation that Debian packages install, each an "app".

Each has its own design (Sphinx themes of several projects, DocBook, Texinfo, AsciiDoc, Doxygen and hand-written
sites), runs offline from ``file://`` and is split between devices; some are held out for evaluation only.
``apt install`` the packages named below (CI does); the apps found on the machine are the corpus.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pocketlearn.errors import ConfigError

DOC = Path("/usr/share/doc")

# name -> (Debian package, the app's folder, its start page inside it): the crawl stays inside the folder
DEBIAN_DOCS: dict[str, tuple[str, Path, str]] = {
    "python": ("python3-doc", DOC / "python3-doc/html", "index.html"),
    "apache": ("apache2-doc", DOC / "apache2-doc/manual", "en/index.html"),
    "sqlite": ("sqlite3-doc", DOC / "sqlite3", "index.html"),
    "git": ("git-doc", DOC / "git-doc", "index.html"),
    "postgresql": ("postgresql-doc-15", DOC / "postgresql-doc-15/html", "index.html"),
    "django": ("python-django-doc", DOC / "python-django-doc/html", "index.html"),
    "nodejs": ("nodejs-doc", DOC / "nodejs/api", "index.html"),
    "flask": ("python-flask-doc", DOC / "python-flask-doc/html", "index.html"),
    "requests": ("python-requests-doc", DOC / "python-requests-doc/html", "index.html"),
    "click": ("python-click-doc", DOC / "python-click-doc/html", "index.html"),
    "pygments": ("python-pygments-doc", DOC / "python-pygments-doc/html", "index.html"),
    "pytest": ("python-pytest-doc", DOC / "python-pytest-doc/html", "index.html"),
    "r": ("r-doc-html", Path("/usr/share/R/doc/manual"), "R-intro.html"),
    "bash": ("bash-doc", DOC / "bash", "bashref.html"),
    "xapian": ("xapian-doc", DOC / "xapian-doc", "index.html"),
}


@dataclass(frozen=True)
class App:
    """An interface to crawl: the folder its pages and resources live in, and its start page there.

    A local web application (:mod:`~pocketlearn.apps.ui.servers`) is served from ``base`` instead, and its
    pages are its ``routes`` (a single-page app links its views by script, not by ``<a href>``).
    """

    name: str
    root: Path
    start: str = "index.html"
    base: str = ""  # a server's origin, "http://127.0.0.1:PORT/"; empty: files under root
    routes: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return self.base + self.start if self.base else (self.root / self.start).absolute().as_uri()

    @property
    def prefix(self) -> str:
        """Every page of the app starts so."""
        return self.base or self.root.absolute().as_uri() + "/"

    def page_name(self, url: str) -> str:
        """A page as the crop store names it: a server's port changes from crawl to crawl, so it is left out."""
        return url.replace(self.base, "http://127.0.0.1/", 1) if self.base else url


def debian_apps(names: Sequence[str] | None = None) -> list[App]:
    """The Debian documentation apps installed here (``names``: these, each of which must be installed)."""
    apps = {n: App(n, root, start) for n, (_, root, start) in DEBIAN_DOCS.items()}
    if names is None:
        return [a for a in apps.values() if (a.root / a.start).is_file()]
    unknown = [n for n in names if n not in DEBIAN_DOCS]
    if unknown:
        raise ConfigError(f"unknown UI apps {unknown}; choose from {sorted(DEBIAN_DOCS)}")
    missing = [DEBIAN_DOCS[n][0] for n in names if not (apps[n].root / apps[n].start).is_file()]
    if missing:
        raise ConfigError(f"these apps are not installed: apt install {' '.join(missing)}")
    return [apps[n] for n in names]


def split_apps(apps: Sequence[App], devices: int, held_out: int) -> tuple[list[list[App]], list[App]]:
    """``held_out`` apps for evaluation only, the rest dealt to ``devices`` devices (by a stable hash of the name)."""
    if held_out >= len(apps) or devices < 1 or devices > len(apps) - held_out:
        raise ConfigError(f"{len(apps)} apps cannot give {held_out} held out and at least one to each of {devices} "
                          "devices; install more documentation packages or lower devices / held_out")
    ordered = sorted(apps, key=lambda a: zlib.crc32(a.name.encode()))
    evaluation, training = ordered[:held_out], ordered[held_out:]
    return [training[d::devices] for d in range(devices)], evaluation
