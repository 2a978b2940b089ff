"""Resident memory of this process, from /proc (Linux): current, peak, and a peak reset."""

from __future__ import annotations

import ctypes
import gc
from pathlib import Path

from pocketlearn.errors import PocketlearnError

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise PocketlearnError(f"/proc/self/status has no {field}; memory measurement needs Linux")


def current_rss() -> int:
    """Resident set size in bytes."""
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    """Peak resident set size (VmHWM) in bytes since the process started or the last reset."""
    return _status_kib("VmHWM") * 1024


def library_rss() -> int:
    """Resident bytes of shared-library mappings (kernel code touched so far), from /proc/self/smaps."""
    total, in_library = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header line: "start-end perms ... path"
                in_library = ".so" in line.rsplit("/", 1)[-1]
            elif in_library and first == "Rss:":
                total += int(line.split()[1]) * 1024
    return total


def release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so RSS counts live memory only."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: RSS may then include freed-but-cached pages
        pass


def reset_peak() -> None:
    """Set VmHWM back to the current RSS (writing 5 to clear_refs; Linux >= 4.0)."""
    release_free_memory()
    _CLEAR_REFS.write_text("5")
