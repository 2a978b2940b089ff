"""What a person looks at: a screen (a page, or a screenshot) with each element outlined and its tappability."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from pocketlearn.apps.ui.browser import Browser
from pocketlearn.apps.ui.crawler import CrawlSettings, PageTapper
from pocketlearn.apps.ui.fence import Fence
from pocketlearn.apps.ui.labeler import Candidate, candidates, crop
from pocketlearn.apps.ui.learn import INPUTS, model_input, tappable
from pocketlearn.apps.ui.pixels import elements
from pocketlearn.checkpoint import CheckpointError, load_weights, write_atomic
from pocketlearn.errors import ConfigError, DataError


def tappability_model(path: str | Path) -> torch.nn.Module:
    """The ``ui-cnn`` that ``pocketlearn ui learn`` wrote (checked: digest, its shapes, the inputs it learned on)."""
    from pocketlearn.models import build_model

    model = build_model("ui-cnn")
    inputs = load_weights(model, path).get("inputs", "in [0, 1]")
    if inputs != INPUTS:
        raise CheckpointError(f"{path} learned from crops {inputs}, this pocketlearn gives the model crops {INPUTS}: "
                              "its predictions would be wrong; run `pocketlearn ui learn` again")
    return model.eval()


MAX_SCREEN_BYTES = 64 << 20  # a screenshot file larger than this is not one
MAX_SCREEN_SIDE = 8192  # pixels: checked before the image is decoded


def predict(page: str | Path, model: torch.nn.Module, out: str | Path, scale: float = 1.0
            ) -> list[tuple[Candidate, float]]:
    """Outline every element of ``page`` (an HTML page, or a PNG screenshot) with its predicted tappability.

    A page is opened in the fenced browser and its elements come from the rendered screen, as the crawler finds
    them; a screenshot's come from its pixels alone (:mod:`pocketlearn.apps.ui.pixels`), ``scale`` being its
    screen pixels per CSS pixel. Writes the outlined screen to ``out`` (PNG) and returns the elements with their
    probabilities, in order (a page's document order, a screenshot's top to bottom).
    """
    path = Path(page).absolute()
    if not path.is_file():
        raise ConfigError(f"{page} is not a file; give an HTML page on this machine (e.g. an app's index.html) "
                          "or a PNG screenshot")
    if path.suffix.lower() == ".png":
        screen = read_screenshot(path)
        listed = elements(screen, scale)
    else:
        screen, listed = _page_screen(path)
    if not listed:
        raise ConfigError(f"{page} shows no element to judge (nothing visible of a tappable size)")
    size = CrawlSettings().crop_size  # the crops the model learned from
    probs = tappable(model, model_input(np.stack([crop(screen, c, size) for c in listed])))
    write_atomic(out, _outlined(screen, listed, probs))
    return [(c, float(p)) for c, p in zip(listed, probs, strict=True)]


def _page_screen(path: Path) -> tuple[np.ndarray, list[Candidate]]:
    """A page's first screen as the crawler sees it, and its candidates."""
    with Browser(Fence([path.parent])) as browser:
        screen = PageTapper(browser, CrawlSettings()).load(path.as_uri())
        listed = candidates(browser.page)
    assert screen is not None, "the top of a page is always a screen"
    return screen, listed


def read_screenshot(path: Path) -> np.ndarray:
    """A PNG as (H, W, 3) uint8, its size checked before it is decoded."""
    from PIL import Image, UnidentifiedImageError

    if path.stat().st_size > MAX_SCREEN_BYTES:
        raise DataError(f"{path} is {path.stat().st_size >> 20} MiB, more than a screenshot "
                        f"({MAX_SCREEN_BYTES >> 20} MiB); give a PNG of one screen")
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise DataError(f"{path} is {image.format}, not PNG; save the screenshot as PNG")
            if max(image.size) > MAX_SCREEN_SIDE:
                raise DataError(f"{path} is {image.size[0]}x{image.size[1]} pixels, more than a screen "
                                f"({MAX_SCREEN_SIDE} a side); give a PNG of one screen")
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path} is not a readable PNG ({e}); take the screenshot again") from e


def _outlined(screen: np.ndarray, listed: list[Candidate], probs: np.ndarray) -> bytes:
    """The screen as PNG bytes, each element outlined (green: tappable, red: not) with its probability."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(screen)
    draw = ImageDraw.Draw(image)
    for c, p in zip(listed, probs, strict=True):
        colour = (0, 170, 0) if p >= 0.5 else (220, 40, 40)
        draw.rectangle([c.x, c.y, c.x + c.w, c.y + c.h], outline=colour, width=2)
        draw.text((c.x + 2, max(0.0, c.y - 11)), f"{p:.2f}", fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
