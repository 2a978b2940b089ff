"""A screenshot's elements found from its pixels alone, for a screen that comes with no DOM (a PNG).

Ink is where the gray level steps by more than ``EDGE`` between neighbouring pixels; lines longer than an
element can be (a panel's border, a separator, the edge of a coloured column) are not ink. The ink is then cut
recursively, as in X-Y cut page segmentation: a block splits into rows at ``ROW_GAP`` empty pixel rows, a row
into pieces at ``COLUMN_GAP`` empty columns, until nothing splits. So a menu gives one element per item and a
line of text one element, whose crop (with its context) is what the model judges. A piece wider than an
element is cut again at word gaps (``WORD_GAP``); pieces outside the DOM candidates' sizes are dropped as they
are (:mod:`pocketlearn.apps.ui.labeler`). Gaps and sizes are in CSS pixels, times ``scale`` (a phone's
screenshot has 2-3 screen pixels per CSS pixel).
"""

from __future__ import annotations

import numpy as np

from pocketlearn.apps.ui.labeler import MAX_HEIGHT, MAX_WIDTH, MIN_SIDE, Candidate

EDGE = 24  # gray levels of 255: the labeler's PIXEL_DELTA, a step the eye sees
ROW_GAP = 3  # empty pixel rows between two lines of text at 16 px (descenders to ascenders: 4-8)
COLUMN_GAP = 12  # empty columns between two items of a menu; a space between words is 3-6
WORD_GAP = 3
PAD = 2  # around the ink: a text's box includes its line's leading, as the DOM's does


def ink(screen: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """(H, W) bool: edges of the (H, W, 3) screen, without straight lines longer than an element."""
    gray = screen.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    mask = np.zeros(gray.shape, dtype=bool)
    mask[:, 1:] |= np.abs(np.diff(gray, axis=1)) > EDGE
    mask[1:, :] |= np.abs(np.diff(gray, axis=0)) > EDGE
    return _without_runs(_without_runs(mask.T, round(MAX_HEIGHT * scale)).T, round(MAX_WIDTH * scale))


def _without_runs(mask: np.ndarray, longest: int) -> np.ndarray:
    """``mask`` with every run of True along its rows longer than ``longest`` cleared."""
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    starts, ends = np.argwhere(edges == 1), np.argwhere(edges == -1)  # row-major: the i-th start meets the i-th end
    out = mask.copy()
    for (row, start), end in zip(starts, ends[:, 1], strict=True):
        if end - start > longest:
            out[row, start:end] = False
    return out


def _runs(filled: np.ndarray, gap: int) -> list[tuple[int, int]]:
    """[start, end) of the inked stretches of a 1-D ``filled``, merged across gaps shorter than ``gap``."""
    at = np.flatnonzero(filled)
    if at.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(at) > gap)
    return list(zip(at[np.r_[0, breaks + 1]], at[np.r_[breaks, at.size - 1]] + 1, strict=True))


def pieces(mask: np.ndarray, scale: float = 1.0) -> list[tuple[int, int, int, int]]:
    """(top, left, bottom, right) of the ink's blocks that nothing splits further."""
    row_gap, column_gap, word_gap = (max(1, round(g * scale)) for g in (ROW_GAP, COLUMN_GAP, WORD_GAP))
    found, todo = [], [(0, 0, *mask.shape)]
    while todo:
        top, left, bottom, right = todo.pop()
        block = mask[top:bottom, left:right]
        across, down = np.any(block, axis=1), np.any(block, axis=0)
        rows = _runs(across, row_gap)
        if len(rows) > 1:
            todo += [(top + a, left, top + b, right) for a, b in rows]
            continue
        columns = _runs(down, column_gap)
        if len(columns) == 1 and columns[0][1] - columns[0][0] > MAX_WIDTH * scale:
            columns = _runs(down, word_gap)  # a line wider than an element: its words
        if len(columns) > 1:
            todo += [(top, left + a, bottom, left + b) for a, b in columns]
        elif rows and columns:
            (a, b), (c, d) = rows[0], columns[0]
            found.append((top + a, left + c, top + b, left + d))
    return sorted(found)


def elements(screen: np.ndarray, scale: float = 1.0) -> list[Candidate]:
    """The screen's candidate elements (boxes in the screenshot's pixels), top to bottom, left to right.

    They carry no DOM reference (``reference`` is False, ``tag`` "pixels"): nothing but pixels is known.
    """
    height, width = screen.shape[:2]
    pad = round(PAD * scale)
    out = []
    for top, left, bottom, right in pieces(ink(screen, scale), scale):
        top, left = max(0, top - pad), max(0, left - pad)
        w, h = min(width, right + pad) - left, min(height, bottom + pad) - top
        if MIN_SIDE <= w / scale <= MAX_WIDTH and MIN_SIDE <= h / scale <= MAX_HEIGHT:
            out.append(Candidate(float(left), float(top), float(w), float(h), "pixels", False))
    return out
