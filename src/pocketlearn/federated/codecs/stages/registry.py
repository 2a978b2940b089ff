"""Every codec stage by the name its spec starts with: parsing a spec and its errors are read from this table.

A new stage is one file in this package and one entry here; ``make_codec`` then parses it and the error for an
unknown stage lists it.
"""

from __future__ import annotations

from pocketlearn.federated.codecs.stages.base import Stage
from pocketlearn.federated.codecs.stages.half import BFloat16, Float16
from pocketlearn.federated.codecs.stages.quantize import Quantize
from pocketlearn.federated.codecs.stages.random_subset import RandomSubset
from pocketlearn.federated.codecs.stages.rotate import Rotate
from pocketlearn.federated.codecs.stages.rows import Rows
from pocketlearn.federated.codecs.stages.sign import Sign
from pocketlearn.federated.codecs.stages.topk import TopK

# name (a stage without a number) or prefix (one with a number, ``Stage.takes`` set) -> stage; listed in this order
STAGES: dict[str, type[Stage]] = {s.name: s for s in (Float16, BFloat16, Quantize, TopK, Sign, Rotate, RandomSubset,
                                                      Rows)}


def stage_forms() -> str:
    """How each registered stage is written, for the error of a spec that names none of them."""
    return ", ".join(s.form or s.name for s in STAGES.values())


def parse_stage(spec: str) -> Stage:
    """The stage ``spec`` names: a registered name (``sign``) or a registered prefix and its number (``topk0.01``).

    Raises ValueError naming the form a numbered stage takes, or every registered form when none matches.
    """
    fixed = STAGES.get(spec)
    if fixed is not None and not fixed.takes:
        try:
            return fixed.from_spec("")
        except ValueError as err:
            raise ValueError(f"codec stage {spec!r}: {err}") from None
    for prefix, stage in sorted(STAGES.items(), key=lambda item: -len(item[0])):  # the longest prefix wins
        if stage.takes and spec.startswith(prefix):
            try:
                return stage.from_spec(spec[len(prefix):])
            except ValueError:  # "topk", "topkx", "topk2": the number is missing, not a number, or out of range
                raise ValueError(f"codec stage {spec!r}: write {stage.takes}") from None
    raise ValueError(f"unknown codec stage {spec!r}; use {stage_forms()}")
