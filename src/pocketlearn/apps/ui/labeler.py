"""Which elements a screen offers, and whether tapping one did anything: judged from pixels and the URL only.

As in the Never-ending UI Learner (Wu et al., UIST 2023), a tap is labelled by comparing the screen before and
after it, with no accessibility API and no annotator. The DOM is read for two things only: where the visible
elements are (the candidates to tap), and a reference that the labels are scored against afterwards (is the
element a link, a form control, or does it carry a click handler?), never to label.

Thresholds (a tap "changed" the screen if any holds):
- the URL changed (another page, or a fragment that scrolls) or a new window opened;
- at least ``CHANGED_PIXELS`` (100, a word of text) of the screen's pixels moved by more than ``PIXEL_DELTA`` (24 of
  255 in gray level), outside the tapped element's own box and ``MARGIN`` (4 px) around it (a pressed style or a
  focus ring is not an effect).
The tapped point is hovered before the "before" screenshot, so a hover style is on both screenshots.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

PIXEL_DELTA = 24
CHANGED_PIXELS = 100
MARGIN = 4
MIN_SIDE = 8  # CSS pixels: smaller is not tappable by a finger
MAX_WIDTH, MAX_HEIGHT = 720, 160  # larger is a region (a column, a panel), not an element

# Visible leaf-like elements (text, images, controls) that are topmost at their centre, with the DOM reference.
CANDIDATES_JS = """
([minSide, maxWidth, maxHeight]) => {
  const W = window.innerWidth, H = window.innerHeight;
  const controls = "a[href], button, input:not([type=hidden]), select, textarea, summary, label[for], " +
    "label:has(input, select, textarea), " +
    "[role=button], [role=link], [role=tab], [role=checkbox], [role=menuitem], [role=switch], [role=option]";
  const interactive = controls + ", [onclick], [data-pl-listener]";
  const own = (e) => Array.from(e.childNodes).some(n => n.nodeType === 3 && n.textContent.trim().length > 0);
  const leafTags = new Set(["IMG", "SVG", "INPUT", "BUTTON", "SELECT", "TEXTAREA", "CANVAS", "VIDEO"]);
  const out = [];
  for (const e of document.body ? document.body.querySelectorAll("*") : []) {
    if (!(own(e) || leafTags.has(e.tagName.toUpperCase()))) continue;
    const r = e.getBoundingClientRect();
    if (r.width < minSide || r.height < minSide || r.width > maxWidth || r.height > maxHeight) continue;
    if (r.left < 0 || r.top < 0 || r.right > W || r.bottom > H) continue;
    const s = getComputedStyle(e);
    if (s.visibility !== "visible" || parseFloat(s.opacity) < 0.1) continue;
    const cx = r.left + r.width / 2, cy = r.top + r.height / 2, top = document.elementFromPoint(cx, cy);
    if (!top || !(top === e || e.contains(top) || top.contains(e))) continue;
    const ref = e.closest(interactive);
    out.push({x: r.left, y: r.top, w: r.width, h: r.height, tag: e.tagName.toLowerCase(),
              reference: ref !== null, control: e.closest(controls) !== null,
              kind: ref ? ref.tagName.toLowerCase() : ""});
  }
  return out;
}
"""


@dataclass(frozen=True)
class Candidate:
    """An element on the screen (CSS pixels) and what the DOM says it is (the reference, not the label)."""

    x: float
    y: float
    w: float
    h: float
    tag: str
    reference: bool  # a link, a form control or an element with a click handler (or inside one)
    control: bool = False  # a link or a form control (or inside one): what the no-learning rule sees
    kind: str = ""

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h / 2

    def box(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) in the pixels of a screenshot of ``shape``, clipped to it."""
        top, left = max(0, int(self.y)), max(0, int(self.x))
        return top, left, min(shape[0], int(np.ceil(self.y + self.h))), min(shape[1], int(np.ceil(self.x + self.w)))


def candidates(page: object) -> list[Candidate]:
    """The page's candidates, in document order."""
    return [Candidate(**c) for c in page.evaluate(CANDIDATES_JS, [MIN_SIDE, MAX_WIDTH, MAX_HEIGHT])]  # type: ignore[attr-defined]


def decode(png: bytes) -> np.ndarray:
    """A screenshot as an (H, W, 3) uint8 array."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def changed_pixels(before: np.ndarray, after: np.ndarray, outside: Candidate | None = None) -> int:
    """Pixels whose gray level moved by more than PIXEL_DELTA (the tapped element's box and MARGIN left out)."""
    if before.shape != after.shape:
        return before.shape[0] * before.shape[1]
    gray = np.array([0.299, 0.587, 0.114])
    moved = np.abs(before @ gray - after @ gray) > PIXEL_DELTA
    if outside is not None:
        top, left, bottom, right = outside.box(moved.shape)
        moved[max(0, top - MARGIN):bottom + MARGIN, max(0, left - MARGIN):right + MARGIN] = False
    return int(moved.sum())


def screen_changed(before: np.ndarray, after: np.ndarray, tapped: Candidate | None = None) -> bool:
    """The label of a tap that neither navigated nor opened a window (those changed the screen by definition)."""
    return changed_pixels(before, after, tapped) >= CHANGED_PIXELS


def crop(screen: np.ndarray, c: Candidate, size: int = 64, context: float = 0.5) -> np.ndarray:
    """The element with ``context`` of its size around it on every side, as a (size, size, 3) uint8 image."""
    from PIL import Image

    margin_x, margin_y = max(8.0, c.w * context), max(8.0, c.h * context)
    wider = Candidate(c.x - margin_x, c.y - margin_y, c.w + 2 * margin_x, c.h + 2 * margin_y, c.tag, c.reference)
    top, left, bottom, right = wider.box(screen.shape)
    image = Image.fromarray(screen[top:bottom, left:right]).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image)
