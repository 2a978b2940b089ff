"""How updates travel: real serialized payloads, optionally compressed by a chain of codec stages.

``make_codec("topk0.01+q8")`` keeps the top 1% of each update's entries and sends their values in 8 bits;
``make_codec("rot+rand0.3+q2")`` rotates the update, keeps a seeded random 30% and sends it in 2 bits (~50x).
Every byte counted in a run's metrics is ``len(payload)`` of what these produce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pocketlearn.errors import ConfigError
from pocketlearn.federated.codecs.dense import decode_dense, dense_size, encode_dense
from pocketlearn.federated.codecs.format import Frame, PayloadError, pack, unpack
from pocketlearn.federated.codecs.stages import Stage, parse_stage

MAX_DECODED_VALUES = 1 << 28  # 1 GiB of float32: the bound of a decode whose caller does not pass the model's shapes


@dataclass(frozen=True)
class Codec:
    """A chain of stages applied in order on encode and undone in reverse on decode."""

    stages: tuple[Stage, ...] = ()

    @property
    def spec(self) -> str:
        return "+".join(s.spec for s in self.stages) or "float32"

    @property
    def lossy(self) -> bool:
        return any(s.lossy for s in self.stages)

    @property
    def biased(self) -> bool:
        """Top-k or sign in the chain: what they drop must be fed back, or training drifts."""
        return any(s.biased for s in self.stages)

    def encode(self, tensors: dict[str, Tensor], rng: np.random.Generator | None = None) -> bytes:
        rng = rng or np.random.default_rng(0)
        frame = Frame({n: t.detach().to(torch.float32).contiguous().numpy() for n, t in sorted(tensors.items())})
        for stage in self.stages:
            frame = stage.forward(frame, rng)
        return pack(frame, [s.spec for s in self.stages])

    def decode(self, payload: bytes | memoryview, expected: dict[str, torch.Size] | None = None
               ) -> dict[str, Tensor]:
        """Undo the chain; with ``expected`` (name -> shape) anything else is a PayloadError, as is NaN/inf.

        Any bytes decode or raise PayloadError, in time and memory bounded by the payload and ``expected``: no
        stage allocates (or draws random numbers for) more values than :meth:`max_values` allows.
        """
        chain, frame = unpack(payload)
        if chain != [s.spec for s in self.stages]:
            raise PayloadError(f"payload was encoded with codec {'+'.join(chain) or 'float32'!r}, this side "
                               f"expects {self.spec!r}")
        limit = self.max_values(len(payload), expected)
        try:
            with np.errstate(all="ignore"):  # forged values may overflow: the finiteness check below refuses them
                for stage in reversed(self.stages):
                    frame = stage.inverse(frame, limit)
        except (ValueError, TypeError, IndexError, KeyError, OverflowError) as err:  # a net: stages check first
            raise PayloadError(f"payload does not decode with {self.spec!r}: {err}") from None
        if frame.meta:
            raise PayloadError(f"payload carries metadata no stage of {self.spec!r} reads: {sorted(frame.meta)[:5]}")
        out = {}
        for n, a in frame.arrays.items():
            if a.dtype != np.float32:
                raise PayloadError(f"payload array {n!r} is still {a.dtype} after decoding")
            if not np.isfinite(a).all():
                raise PayloadError(f"payload array {n!r} holds NaN or infinite values")
            out[n] = torch.from_numpy(a)
        if expected is not None:
            _check_shapes(out, expected)
        return out

    def max_values(self, payload_bytes: int, expected: dict[str, torch.Size] | None = None) -> int:
        """The most values a payload of ``payload_bytes`` may decode to, checked before any stage allocates.

        At most the model's size (``expected``) and what the chain can make of that many bytes (the product of
        its stages' expansions); without ``expected``, at most MAX_DECODED_VALUES.
        """
        bound = float(payload_bytes)
        for stage in self.stages:
            bound *= stage.expansion
        if expected is not None:
            return int(min(bound, sum(math.prod(shape) for shape in expected.values())))
        return int(min(bound, MAX_DECODED_VALUES))


def _check_shapes(out: dict[str, Tensor], expected: dict[str, torch.Size]) -> None:
    if set(out) - set(expected):
        raise PayloadError(f"payload carries unknown tensors {sorted(set(out) - set(expected))[:5]}")
    for n, t in out.items():
        if t.shape != expected[n]:
            raise PayloadError(f"payload tensor {n!r} has shape {tuple(t.shape)}, the model's is "
                               f"{tuple(expected[n])}")


def make_codec(spec: str | None) -> Codec:
    """A codec from its spec: ``None``/``"float32"`` is uncompressed, else stages joined by ``+``.

    Stages are those of :data:`~pocketlearn.federated.codecs.stages.STAGES`: fp16, bf16, q8/q4/q2/q1, topk0.01,
    sign, rot, rand0.3, rows.
    """
    if not spec or spec == "float32":
        return Codec()
    try:
        return Codec(tuple(parse_stage(s.strip()) for s in spec.split("+")))
    except ValueError as err:
        raise ConfigError(str(err)) from None


class ErrorFeedback:
    """Per-client residuals of a lossy codec, kept on the client: what was not sent is added to the next update.

    With it, top-k and sign compression converge like uncompressed SGD (Karimireddy et al., ICML 2019). Unbiased
    codecs do without: when a client is sampled only now and then, its stale residual hurts more than it helps.
    """

    def __init__(self) -> None:
        self.residuals: dict[int, dict[str, Tensor]] = {}

    def encode(self, codec: Codec, client: int, delta: dict[str, Tensor], rng: np.random.Generator
               ) -> tuple[bytes, dict[str, Tensor]]:
        """(payload, what the server will decode) for ``delta`` plus this client's residual."""
        residual = self.residuals.get(client)
        corrected = {n: d + residual[n] for n, d in delta.items()} if residual else delta
        payload = codec.encode(corrected, rng)
        sent = codec.decode(payload, {n: t.shape for n, t in corrected.items()})
        self.residuals[client] = {n: corrected[n] - sent[n] for n in corrected}
        return payload, sent

    def state_dict(self) -> dict[int, dict[str, Tensor]]:
        return self.residuals

    def load_state_dict(self, state: dict[int, dict[str, Tensor]]) -> None:
        self.residuals = {int(k): v for k, v in state.items()}


__all__ = ["Codec", "ErrorFeedback", "Frame", "PayloadError", "decode_dense", "dense_size", "encode_dense",
           "make_codec", "pack", "unpack"]
