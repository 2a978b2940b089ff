"""Crawled crops on disk: whole shards or none, checked when read back; the corpus split between devices."""

import numpy as np
import pytest

from pocketlearn.apps.ui.corpus import App, split_apps
from pocketlearn.apps.ui.dataset import CropStore, PageCrops
from pocketlearn.errors import ConfigError, DataError


def _page(n=5, app="a", url="file:///x/index.html"):
    rng = np.random.default_rng(n)
    return PageCrops(app, url, rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8), rng.random(n) > 0.5,
                     rng.random(n) > 0.5, rng.random(n) > 0.5, rng.random((n, 4)).astype(np.float32), 1.5)


def test_shards_read_back_whole_and_a_flipped_byte_is_reported(tmp_path):
    store = CropStore(tmp_path)
    path = store.add(_page())
    store.add(_page(3, url="file:///x/two.html"))
    assert store.has("a", "file:///x/index.html") and not list(tmp_path.rglob("*.tmp"))
    back = store.load()
    assert len(back.labels) == 8 and back.crops.dtype == np.uint8 and back.seconds == 3.0
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0xFF  # inside the crops
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupt|not a readable crop shard") as err:
        store.load()
    assert "crawl again" in str(err.value)
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable crop shard"):
        store.load()


def test_an_empty_store_says_to_crawl_first(tmp_path):
    with pytest.raises(DataError, match="pocketlearn ui crawl"):
        CropStore(tmp_path / "none").load()


def test_apps_are_dealt_to_devices_and_some_held_out(tmp_path):
    apps = [App(f"app{i}", tmp_path) for i in range(14)]
    devices, held_out = split_apps(apps, 4, 3)
    assert len(held_out) == 3 and sorted(len(d) for d in devices) == [2, 3, 3, 3]
    dealt = [a.name for d in devices for a in d] + [a.name for a in held_out]
    assert sorted(dealt) == sorted(a.name for a in apps)
    assert split_apps(apps, 4, 3) == (devices, held_out)  # stable
    with pytest.raises(ConfigError, match="cannot give 3 held out"):
        split_apps(apps[:5], 4, 3)
