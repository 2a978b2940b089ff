"""Fixed-point encoding of float updates in Z_{2^bits}, where masks add and cancel exactly."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pocketlearn.errors import ConfigError, TrainingError, raise_problems

_MAX_LEVEL = 2**53  # float64 represents every integer up to here, so rounding never lands past the bound


@dataclass(frozen=True)
class FieldSpec:
    """Values are clipped to [-clip, clip] and scaled so the sum of ``max_clients`` of them never wraps.

    The ring is Z_{2^bits} (bits 32 or 64) rather than Z_p: numpy's unsigned arithmetic wraps there for free,
    and a uniform mask is just uniform bytes. Each client's value is at most ``levels`` in magnitude and
    ``max_clients * levels < 2^(bits-1)``, so the sum read back as a signed integer is exact.
    """

    clip: float
    max_clients: int
    bits: int = 32

    def __post_init__(self) -> None:
        problems = []
        if not (np.isfinite(self.clip) and self.clip > 0):
            problems.append(f"`clip` should be a positive finite value, got {self.clip}")
        if self.max_clients < 1:
            problems.append(f"`max_clients` should be at least 1, got {self.max_clients}")
        if self.bits not in (32, 64):
            problems.append(f"`bits` should be 32 or 64, got {self.bits}")
        elif self.max_clients >= 1 and self.levels < 1:
            problems.append(f"{self.max_clients} clients leave no room in {self.bits} bits; use bits=64")
        raise_problems("", problems)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint32 if self.bits == 32 else np.uint64)

    @property
    def levels(self) -> int:
        """Largest magnitude one client's quantized value may take."""
        return min((2 ** (self.bits - 1) - 1) // self.max_clients, _MAX_LEVEL)

    @property
    def scale(self) -> float:
        return self.levels / self.clip

    def max_error(self, num_clients: int) -> float:
        """Worst rounding error of a dequantized sum of ``num_clients`` values inside the clip range."""
        return 0.5 * num_clients / self.scale

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Floats (any shape) → ring elements, flattened; values outside [-clip, clip] are clipped."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if not np.isfinite(x).all():
            raise TrainingError("an update holds NaN or inf; it cannot be quantized for secure aggregation")
        q = np.clip(np.rint(x * self.scale), -self.levels, self.levels).astype(np.int64)
        return q.astype(self.dtype)  # two's complement: negatives wrap to the top of the ring

    def dequantize(self, total: np.ndarray, num_clients: int) -> np.ndarray:
        """The ring sum of ``num_clients`` quantized vectors → their float sum."""
        if num_clients > self.max_clients:
            raise ConfigError(f"the sum of {num_clients} clients may have wrapped: the field was sized for "
                              f"max_clients={self.max_clients}; raise max_clients")
        signed = np.asarray(total, dtype=self.dtype).view(np.int32 if self.bits == 32 else np.int64)
        return signed.astype(np.float64) / self.scale
