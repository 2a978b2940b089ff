"""Elements from a screenshot's pixels alone, and `ui predict` on a PNG."""

import shutil

import numpy as np
import pytest
from PIL import Image

from pocketlearn.apps.ui.pixels import PAD, elements
from pocketlearn.errors import DataError


def _screen() -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A white screen with known ink, and the (left, top, right, bottom) of each element it should show.

    An edge is marked on the pixel after the step, so a block's ink ends one pixel past its right and bottom.
    """
    s = np.full((300, 700, 3), 255, dtype=np.uint8)
    expected = []
    for left in (20, 100, 180):  # a menu: three items 40 px apart
        s[20:32, left:left + 50] = 30
        expected.append((left, 20, left + 51, 33))
    for left in range(20, 520, 34):  # a line of words 4 px apart: one element
        s[60:72, left:left + 30] = 30
    expected.append((20, 60, 527, 73))
    s[:, 600] = 0  # a separator from top to bottom: not an element, and it joins nothing
    s[100:102, 20:22] = 0  # a speck, smaller than a finger
    s[120:290, 100:140] = 90  # a picture taller than an element (a region)
    return s, expected


def _boxes(found):
    return [(round(c.x), round(c.y), round(c.x + c.w), round(c.y + c.h)) for c in found]


def test_a_screen_splits_into_its_menu_items_and_lines_and_nothing_else():
    screen, expected = _screen()
    padded = [(a - PAD, b - PAD, c + PAD, d + PAD) for a, b, c, d in expected]
    assert sorted(_boxes(elements(screen))) == sorted(padded)
    assert all(c.tag == "pixels" and not c.reference for c in elements(screen))


def test_a_phones_screenshot_at_twice_the_pixels_gives_the_same_elements_twice_as_large():
    screen, _ = _screen()
    double = screen.repeat(2, axis=0).repeat(2, axis=1)
    twice = [tuple(2 * v for v in box) for box in _boxes(elements(screen))]
    found = _boxes(elements(double, scale=2))
    assert len(found) == len(twice) == 4
    assert all(np.abs(np.subtract(a, b)).max() <= 1 for a, b in zip(found, twice, strict=True))  # the edge's pixel


def test_a_line_wider_than_an_element_is_judged_word_by_word():
    screen = np.full((40, 1000, 3), 255, dtype=np.uint8)
    for left in range(10, 970, 40):  # 24 words, 8 px apart: 950 px, wider than any element
        screen[10:22, left:left + 32] = 0
    assert len(elements(screen)) == 24


def _model(tmp_path, inputs=None):
    from pocketlearn.apps.ui.learn import INPUTS
    from pocketlearn.checkpoint import save_checkpoint
    from pocketlearn.models import build_model

    path = tmp_path / "model.pt"
    written = {"model": build_model("ui-cnn").state_dict(), "model_name": "ui-cnn", "inputs": inputs or INPUTS}
    save_checkpoint(path, {k: v for k, v in written.items() if inputs != "absent" or k != "inputs"})
    return path


def test_a_model_learned_from_other_inputs_is_refused_with_the_fix(tmp_path):
    from pocketlearn.apps.ui.predict import tappability_model
    from pocketlearn.checkpoint import CheckpointError

    assert tappability_model(_model(tmp_path)) is not None
    with pytest.raises(CheckpointError, match="in \\[0, 1\\].*ui learn. again"):
        tappability_model(_model(tmp_path, inputs="absent"))  # written before the crops were centred


def test_ui_predict_outlines_a_png_screenshots_elements(tmp_path):
    from typer.testing import CliRunner

    from pocketlearn.cli.main import app as cli

    screen, expected = _screen()
    Image.fromarray(screen).save(tmp_path / "shot.png")
    out = tmp_path / "shown.png"
    result = CliRunner().invoke(cli, ["ui", "predict", str(tmp_path / "shot.png"), "--model", str(_model(tmp_path)),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{len(expected)} elements" in result.output
    shown = np.asarray(Image.open(out).convert("RGB"))
    assert shown.shape == screen.shape and not np.array_equal(shown, screen)  # outlined


@pytest.mark.parametrize("kind", ["jpeg", "garbage", "huge"])
def test_a_screenshot_that_is_not_a_png_of_a_screen_is_refused_before_decoding(tmp_path, kind):
    from pocketlearn.apps.ui.predict import read_screenshot

    path = tmp_path / "shot.png"
    if kind == "jpeg":
        Image.new("RGB", (20, 20)).save(path, format="JPEG")
    elif kind == "garbage":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    else:
        Image.new("1", (9000, 8)).save(path)  # a few hundred bytes that would decode to 9000 px a row
    with pytest.raises(DataError, match="PNG|screen"):
        read_screenshot(path)


@pytest.mark.skipif(not any(shutil.which(n) for n in ("chromium", "chromium-browser")), reason="no Chromium")
def test_on_a_rendered_page_every_dom_element_overlaps_one_found_from_pixels(fixture_app):
    pytest.importorskip("playwright")
    from pocketlearn.apps.ui.browser import Browser
    from pocketlearn.apps.ui.crawler import CrawlSettings, PageTapper
    from pocketlearn.apps.ui.fence import Fence
    from pocketlearn.apps.ui.labeler import candidates

    with Browser(Fence([fixture_app.root])) as browser:
        screen = PageTapper(browser, CrawlSettings()).load((fixture_app.root / "index.html").as_uri())
        dom = candidates(browser.page)
    found = elements(screen)

    def overlaps(a, b):
        return a.x < b.x + b.w and b.x < a.x + a.w and a.y < b.y + b.h and b.y < a.y + a.h

    assert len(dom) >= 6
    assert all(any(overlaps(d, f) for f in found) for d in dom)
    assert all(any(overlaps(f, d) for d in dom) for f in found)  # nothing where the page shows nothing
