"""What a person looks at: a page's screen with each element outlined and its predicted tappability."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from pocketlearn.apps.ui.browser import Browser
from pocketlearn.apps.ui.crawler import CrawlSettings, PageTapper
from pocketlearn.apps.ui.fence import Fence
from pocketlearn.apps.ui.labeler import Candidate, candidates, crop
from pocketlearn.apps.ui.learn import model_input, tappable
from pocketlearn.checkpoint import load_weights, write_atomic
from pocketlearn.errors import ConfigError


def tappability_model(path: str | Path) -> torch.nn.Module:
    """The ``ui-cnn`` that ``pocketlearn ui learn`` wrote (checked: digest, then its shapes)."""
    from pocketlearn.models import build_model

    model = build_model("ui-cnn")
    load_weights(model, path)
    return model.eval()


def predict_page(page: str | Path, model: torch.nn.Module, out: str | Path) -> list[tuple[Candidate, float]]:
    """Open ``page`` (an HTML file) fenced to its folder and predict every element on its screen.

    Writes the outlined screen to ``out`` (PNG); returns the elements with their probabilities, in document order.
    """
    from PIL import Image, ImageDraw

    path = Path(page).absolute()
    if not path.is_file():
        raise ConfigError(f"{page} is not a file; give an HTML page on this machine (e.g. an app's index.html)")
    settings = CrawlSettings()
    with Browser(Fence([path.parent])) as browser:
        screen = PageTapper(browser, settings).load(path.as_uri())  # the screen as the crawler sees it
        listed = candidates(browser.page)
    assert screen is not None, "the top of a page is always a screen"
    if not listed:
        raise ConfigError(f"{page} shows no element to judge (nothing visible of a tappable size)")
    probs = tappable(model, model_input(np.stack([crop(screen, c, settings.crop_size) for c in listed])))
    image = Image.fromarray(screen)
    draw = ImageDraw.Draw(image)
    for c, p in zip(listed, probs, strict=True):
        colour = (0, 170, 0) if p >= 0.5 else (220, 40, 40)
        draw.rectangle([c.x, c.y, c.x + c.w, c.y + c.h], outline=colour, width=2)
        draw.text((c.x + 2, max(0.0, c.y - 11)), f"{p:.2f}", fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_atomic(out, buffer.getbuffer())
    return [(c, float(p)) for c, p in zip(listed, probs, strict=True)]
