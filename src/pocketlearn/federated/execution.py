"""How the in-process engine runs vectorized clients: which stacked forward, and how many clients at once.

Both are chosen by timing real steps at setup rather than by a formula: the fastest group size depends on
the model, the batch and the machine's caches (a next-word transformer on 2 cores trains ~30% faster per
client in groups of 2 than all 10 at once: its logits of 10 clients no longer fit in cache; an MLP is fastest
with every client in one group). The choice is cached per model shape, batch, precision and thread count, and
per machine (processor, torch) in the cache folder across runs: a rerun skips the timing and groups its clients
as the first run did, so it computes the same weights (different groupings round differently).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# A smaller group must be this much faster per client-step to be chosen: fewer groups pay less per-round overhead
# than a one-step timing shows, so near-ties go to the larger group.
TIE = 0.03
# Smaller groups are timed only for forwards within this factor of the fastest with the whole cohort.
SEARCHED = 1.5


@dataclass(frozen=True)
class Execution:
    """The vectorized path's choice; ``timings`` holds seconds per client-step by (forward, group size)."""

    forward: str
    group_size: int
    timings: dict[tuple[str, int], float] = field(default_factory=dict)
    earlier: bool = False  # the timings come from an earlier run on this machine (the cache)

    def describe(self) -> str:
        """One line for the run summary: the choice and the measurements behind it."""
        if not self.timings:
            return f"{self.forward}, up to {self.group_size} clients per group (not timed)"
        chosen = self.timings[(self.forward, self.group_size)]
        others = "; ".join(f"{f}: " + ", ".join(f"{g}: {s * 1e3:.3g}" for (f2, g), s in sorted(self.timings.items())
                                               if f2 == f and (f, g) != (self.forward, self.group_size))
                           for f in dict.fromkeys(f for f, _ in self.timings))
        when = "timed in an earlier run on this machine" if self.earlier else "timed at setup"
        return (f"{self.forward}, {self.group_size} clients per group ({when}: {chosen * 1e3:.3g} ms per "
                f"client-step; by group size, {others})")


def group_sizes(largest: int) -> list[int]:
    """Candidate group sizes: powers of two below ``largest``, and ``largest`` itself."""
    return sorted({min(1 << i, largest) for i in range(max(largest, 1).bit_length() + 1)})


def choose(forwards: Sequence[str], cohort: int, seconds_per_client_step: Callable[[str, int], float]
           ) -> Execution:
    """The (forward, group size) that trains the whole ``cohort`` fastest, from timed steps of each.

    A group size's cost is that of the whole cohort in such groups: with 10 clients, groups of 8 leave a
    group of 2, whose (slower) client-steps count too. A forward much slower than the best with the whole cohort
    (a vmap'd CNN, twice as slow as its grouped convolutions) is not timed at other sizes.
    """
    timings: dict[tuple[str, int], float] = {}

    def per_step(forward: str, size: int) -> float:
        if (forward, size) not in timings:
            timings[(forward, size)] = seconds_per_client_step(forward, size)
        return timings[(forward, size)]

    def cohort_cost(choice: tuple[str, int]) -> float:
        (forward, size), (full, rest) = choice, divmod(cohort, choice[1])
        return full * size * per_step(forward, size) + (rest * per_step(forward, rest) if rest else 0.0)

    best = min(((f, cohort) for f in forwards), key=cohort_cost)
    close = [f for f in forwards if per_step(f, cohort) <= SEARCHED * per_step(best[0], cohort)]
    for choice in [(f, g) for f in close for g in reversed(group_sizes(cohort))]:  # larger groups first
        if cohort_cost(choice) < (1 - TIE) * cohort_cost(best):
            best = choice
    return Execution(*best, timings)


def timed(run: Callable[[], object], budget_s: float = 0.15, at_least: int = 2, at_most: int = 10) -> float:
    """The fastest run of ``run`` (after an untimed one: allocations, kernel selection), repeated within a budget.

    The fastest, not the mean: on a shared machine, noise only ever adds time.
    """
    run()
    times: list[float] = []
    while len(times) < at_least or (len(times) < at_most and sum(times) < budget_s):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


_CHOSEN: dict[Hashable, Execution] = {}
MAX_CACHE_BYTES = 1 << 20  # a larger file is not our cache: it is ignored (and replaced)


def cached(key: Hashable, make: Callable[[], Execution]) -> Execution:
    """``make()``'s choice, measured once per ``key`` on this machine (kept in :func:`cache_file`)."""
    if key not in _CHOSEN:
        name = hashlib.sha256(repr((key, _machine())).encode()).hexdigest()[:32]
        stored = _read_cache()
        found = _execution(stored.get(name))
        if found is None:
            found = make()
            stored[name] = {"forward": found.forward, "group_size": found.group_size,
                            "timings": [[f, g, t] for (f, g), t in found.timings.items()]}
            _write_cache(stored)
        _CHOSEN[key] = found
    return _CHOSEN[key]


def cache_file() -> Path:
    from pocketlearn.models.pretrained import cache_dir

    return cache_dir() / "execution.json"


def _machine() -> tuple[str, ...]:
    """What the timings depend on besides the workload: the processor and the torch build."""
    import torch

    model = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    return platform.machine(), model or platform.processor(), str(os.cpu_count()), torch.__version__


def _read_cache() -> dict[str, object]:
    """The stored choices; a missing, oversized or unreadable file is an empty cache (the timing runs again)."""
    path = cache_file()
    try:
        if path.stat().st_size > MAX_CACHE_BYTES:
            return {}
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _execution(entry: object) -> Execution | None:
    """A stored choice, or None if it is not one (schema-checked: it came from disk)."""
    if not isinstance(entry, dict):
        return None
    forward, size, timings = entry.get("forward"), entry.get("group_size"), entry.get("timings")
    if not (isinstance(forward, str) and isinstance(size, int) and size >= 1 and isinstance(timings, list)):
        return None
    parsed = {}
    for row in timings:
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str) and isinstance(row[1], int)
                and isinstance(row[2], float)):
            return None
        parsed[(row[0], row[1])] = row[2]
    return Execution(forward, size, parsed, earlier=True)


def _write_cache(stored: dict[str, object]) -> None:
    from pocketlearn.checkpoint import write_atomic

    try:
        cache_file().parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache_file(), json.dumps(stored, indent=1).encode())
    except OSError:  # a read-only home: the choice still holds for this process
        pass
