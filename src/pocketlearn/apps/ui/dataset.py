"""The crawled crops on disk: one shard per crawled page, written atomically and checked when read back.

A shard appears whole or not at all (written beside, then renamed), so a crawl killed at any moment loses only
the page it was tapping, and resumes by skipping the pages whose shard is there. Each shard carries the sha256
of its arrays; a shard that does not match is reported as corrupt, never used.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocketlearn.checkpoint import write_atomic
from pocketlearn.errors import DataError

FIELDS = ("crops", "labels", "reference", "control", "boxes")
MAX_SHARD_BYTES = 64 << 20  # a page's crops are a few MB; a larger file is not one of ours


@dataclass
class PageCrops:
    """One page's taps: the crops (N, S, S, 3) uint8, the labels, what the DOM says, the boxes (x, y, w, h)."""

    app: str
    url: str
    crops: np.ndarray
    labels: np.ndarray  # bool: the tap changed the screen
    reference: np.ndarray  # bool: the DOM says the element is a link, a control or has a click handler
    control: np.ndarray  # bool: the DOM says link or form control (the no-learning rule: no handlers)
    boxes: np.ndarray  # float32 (N, 4), CSS pixels
    seconds: float = 0.0  # time spent tapping this page

    def __len__(self) -> int:
        return len(self.labels)


def page_key(app: str, url: str) -> str:
    return hashlib.sha1(f"{app}\n{url}".encode()).hexdigest()[:16]


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in FIELDS:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class CropStore:
    """A folder of shards ``<app>/<page key>.npz``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, app: str, url: str) -> Path:
        return self.root / app / f"{page_key(app, url)}.npz"

    def has(self, app: str, url: str) -> bool:
        return self.path(app, url).is_file()

    def add(self, page: PageCrops) -> Path:
        """Write ``page``'s shard atomically (a crash leaves the old state or the new, never half)."""
        arrays = {"crops": page.crops.astype(np.uint8), "labels": page.labels.astype(bool),
                  "reference": page.reference.astype(bool), "control": page.control.astype(bool),
                  "boxes": page.boxes.astype(np.float32)}
        buffer = io.BytesIO()
        fields: dict[str, np.ndarray] = {**arrays, "digest": np.array(_digest(arrays)), "app": np.array(page.app),
                                         "url": np.array(page.url), "seconds": np.array(page.seconds)}
        np.savez(buffer, allow_pickle=False, **fields)
        path = self.path(page.app, page.url)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, buffer.getbuffer())
        return path

    def read(self, path: Path) -> PageCrops:
        """One shard, its size and checksum checked; a bad one is a DataError that says how to mend it."""
        fix = f"delete {path} and crawl again (`pocketlearn ui crawl` redoes only missing pages)"
        size = path.stat().st_size
        if size > MAX_SHARD_BYTES:
            raise DataError(f"{path} is {size} bytes, more than a page's shard can be ({MAX_SHARD_BYTES}); {fix}")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {name: z[name] for name in FIELDS}
                digest, app, url, seconds = str(z["digest"]), str(z["app"]), str(z["url"]), float(z["seconds"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
            raise DataError(f"{path} is not a readable crop shard ({err}); {fix}") from None
        if _digest(arrays) != digest:
            raise DataError(f"{path} is corrupt (its checksum does not match its contents); {fix}")
        return PageCrops(app, url, arrays["crops"], arrays["labels"], arrays["reference"], arrays["control"],
                         arrays["boxes"], seconds)

    def pages(self, apps: Sequence[str] | None = None) -> Iterator[PageCrops]:
        """Every shard (of ``apps``), in a stable order."""
        folders = sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
        for folder in folders:
            if apps is None or folder.name in apps:
                for path in sorted(folder.glob("*.npz")):
                    yield self.read(path)

    def load(self, apps: Sequence[str] | None = None) -> PageCrops:
        """All crops (of ``apps``) as one PageCrops (app and url: those of the first page)."""
        pages = list(self.pages(apps))
        if not pages:
            raise DataError(f"no crawled pages in {self.root}" + (f" for apps {list(apps)}" if apps else "")
                            + "; run `pocketlearn ui crawl` first")
        crops, labels, reference, control, boxes = (np.concatenate([getattr(p, f) for p in pages]) for f in FIELDS)
        return PageCrops(pages[0].app, pages[0].url, crops, labels, reference, control, boxes,
                         sum(p.seconds for p in pages))
