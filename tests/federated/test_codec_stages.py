"""The codec-stage registry: a stage added in one entry parses, round-trips and is named in the errors."""

import hashlib
import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from pocketlearn.errors import ConfigError
from pocketlearn.federated.codecs import Frame, make_codec
from pocketlearn.federated.codecs.stages import STAGES, Stage

_rng = np.random.default_rng(0)
UPDATE = {"w": torch.from_numpy(_rng.standard_normal((16, 8)).astype(np.float32)),
          "b": torch.from_numpy(_rng.standard_normal(8).astype(np.float32))}
SHAPES = {n: t.shape for n, t in UPDATE.items()}


@dataclass(frozen=True)
class Negate(Stage):
    """Lossless: every value negated (a stand-in for a new stage without a number)."""

    name: ClassVar[str] = "neg"
    lossy: ClassVar[bool] = False

    def forward(self, frame: Frame, rng: np.random.Generator) -> Frame:
        return Frame({n: -a if a.dtype == np.float32 else a for n, a in frame.arrays.items()}, frame.meta)

    def inverse(self, frame: Frame, limit: int) -> Frame:
        return self.forward(frame, np.random.default_rng(0))


@dataclass(frozen=True)
class Scale(Stage):
    """Values times the spec's factor (``scale2``): a stand-in for a new stage with a number."""

    factor: float = 1.0
    name: ClassVar[str] = "scale"
    form: ClassVar[str] = "scale<factor>"
    takes: ClassVar[str] = "scale<factor>, a positive number, e.g. scale2"

    def __post_init__(self) -> None:
        if not self.factor > 0:
            raise ValueError(f"scale factor must be positive, got {self.factor}")

    @classmethod
    def from_spec(cls, number: str) -> Stage:
        return cls(float(number))

    @property
    def spec(self) -> str:
        return f"{self.name}{self.factor:g}"

    def forward(self, frame: Frame, rng: np.random.Generator) -> Frame:
        return Frame({n: a * np.float32(self.factor) if a.dtype == np.float32 else a
                      for n, a in frame.arrays.items()}, frame.meta)

    def inverse(self, frame: Frame, limit: int) -> Frame:
        return Frame({n: a / np.float32(self.factor) if a.dtype == np.float32 else a
                      for n, a in frame.arrays.items()}, frame.meta)


@dataclass(frozen=True)
class QuarterScale(Scale):
    """A numbered stage whose prefix starts with another's (``q``)."""

    name: ClassVar[str] = "qscale"
    form: ClassVar[str] = "qscale<factor>"
    takes: ClassVar[str] = "qscale<factor>, a positive number, e.g. qscale4"


@pytest.fixture
def registered(monkeypatch):
    for stage in (Negate, Scale, QuarterScale):
        monkeypatch.setitem(STAGES, stage.name, stage)


def _round_trip(spec):
    codec = make_codec(spec)
    return codec, codec.decode(codec.encode(UPDATE, np.random.default_rng(1)), SHAPES)


def test_a_registered_stage_parses_round_trips_and_chains(registered):
    codec, out = _round_trip("neg")
    assert codec.stages == (Negate(),) and codec.spec == "neg" and not codec.lossy
    assert all(torch.equal(out[n], UPDATE[n]) for n in UPDATE)
    codec, out = _round_trip("neg+q8")
    assert codec.spec == "neg+q8" and codec.lossy
    for n, t in UPDATE.items():  # within one 8-bit step of the input
        assert (out[n] - t).abs().max().item() <= (t.max() - t.min()).item() / 255 * 1.0001


def test_a_registered_stage_with_a_number_takes_it_and_names_its_form(registered):
    codec, out = _round_trip("scale2+fp16")
    assert codec.stages[0] == Scale(2.0) and codec.spec == "scale2+fp16"
    assert all(torch.allclose(out[n], UPDATE[n], rtol=1e-3, atol=1e-3) for n in UPDATE)
    for spec in ("scale", "scalex", "scale-1"):
        with pytest.raises(ConfigError, match=re.escape(f"codec stage {spec!r}: write {Scale.takes}")):
            make_codec(spec)


def test_the_longest_registered_prefix_wins(registered):
    assert make_codec("qscale4").stages == (QuarterScale(4.0),)
    assert make_codec("q4").spec == "q4"


def test_a_stage_not_registered_is_unknown():
    with pytest.raises(ConfigError, match="unknown codec stage 'neg'"):
        make_codec("neg")


def test_the_unknown_stage_error_lists_every_registered_form(registered):
    with pytest.raises(ConfigError) as err:
        make_codec("zip")
    listed = str(err.value).split("; use ", 1)[1].split(", ")
    for stage in STAGES.values():
        assert all(form in listed for form in (stage.form or stage.name).split(", "))
    assert "neg" in listed and "scale<factor>" in listed


def test_the_unknown_stage_error_reads_as_before():
    with pytest.raises(ConfigError) as err:
        make_codec("zip")
    assert str(err.value) == ("unknown codec stage 'zip'; use fp16, bf16, q8, q4, q2, q1, topk<fraction> "
                              "(e.g. topk0.01), sign, rot, rand<fraction> (e.g. rand0.3), rows")


# sha256 (first 16 hex digits) of each payload as the single-module stages.py wrote it (commit ea5587a): the
# stages' package writes the same bytes
PINNED = {"fp16": "bb2e99d7524ddf52", "bf16": "e5a8b4bed2bd9cfd", "q8": "a3d8159ac87783c5", "q4": "d7b76fe017babc81",
          "q2": "dbf452d3d1234b62", "q1": "08bff6501d229804", "topk0.05": "56f2f4a0e5e1f2ae",
          "topk0.5": "e305a350d8159b0c", "sign": "df316adc48ecc0e0", "rot": "6bf85388d8c3d633",
          "rand0.3": "99d0de65279bbe51", "rows": "63ccf323ed59935a", "topk0.1+q8": "16f15e842c4f5fe4",
          "rot+rand0.3+q2": "1e10b990e4f79b60", "rows+q8": "690e4b055f334ffe", "float32": "933ae1249961d88b"}


@pytest.mark.parametrize("spec", sorted(PINNED))
def test_every_stage_writes_the_bytes_it_wrote_before(spec):
    table = torch.zeros(40, 4)
    table[[3, 17]] = UPDATE["w"][:2, :4]
    payload = make_codec(spec).encode({**UPDATE, "table": table}, np.random.default_rng(7))
    assert hashlib.sha256(payload).hexdigest()[:16] == PINNED[spec]
