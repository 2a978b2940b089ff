"""What an exported training program is: the ``.pte`` plus a JSON sidecar that says how to feed it.

The sidecar (``train.pte.json``) carries everything ``device-train`` needs to map the program back to
pocketlearn — model, method, options, input and target shapes, batch size, loss, the optimizer's settings,
which state keys train — and the SHA-256 of the ``.pte``. The runtime does not verify a program's flatbuffer
before running it (a corrupt one can crash the process), so the digest is checked first.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pocketlearn.checkpoint import write_atomic
from pocketlearn.errors import PocketlearnError

FORMAT_VERSION = 1
FORWARD_METHOD = "forward"  # the joint forward + backward step: (inputs, targets) -> loss, gradients, parameters
STATE_METHOD = "frozen_state"  # () -> the state-dict tensors that do not train (absent when all train)


class ProgramError(PocketlearnError, ValueError):
    """A training program (.pte) or its sidecar is missing, corrupt, or from another format version."""


@dataclass(frozen=True)
class ProgramInfo:
    """How to feed an exported training step and map its parameters back to a pocketlearn model."""

    model: str  # a name from `pocketlearn models`
    method: str  # backprop | bias | sparse | lora
    options: dict[str, Any]  # the method's options, as given
    batch_size: int  # static: the program takes exactly this many examples
    input_shape: list[int]  # per example
    input_dtype: str  # "float32" or "int64" (token ids)
    target_shape: list[int]  # per example: [] for a class label, [T] for a language model's next tokens
    num_classes: int  # labels (or token ids) lie in [0, num_classes); -100 is ignored
    lr: float
    momentum: float
    weight_decay: float
    trainable: list[str]  # state keys that train, each a parameter of the exported program
    state_keys: list[str]  # the model's state-dict keys in order; STATE_METHOD returns those not in trainable
    loss: str = "cross_entropy"  # mean over targets; pocketlearn.methods.base.cross_entropy
    sha256: str = ""  # of the .pte bytes
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # export details (seq_len, init checkpoint, versions)

    @property
    def frozen(self) -> list[str]:
        """State keys that do not train, in the order STATE_METHOD returns them."""
        trainable = set(self.trainable)
        return [k for k in self.state_keys if k not in trainable]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ProgramInfo:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def sidecar_path(program: str | Path) -> Path:
    """``train.pte`` → ``train.pte.json``."""
    return Path(f"{program}.json")


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_program(path: str | Path, program: bytes, info: ProgramInfo) -> ProgramInfo:
    """Write the ``.pte`` and its sidecar, each atomically; returns ``info`` with the digest filled in."""
    path = Path(path)
    info = ProgramInfo.from_dict({**asdict(info), "sha256": hashlib.sha256(program).hexdigest()})
    write_atomic(path, program)
    write_atomic(sidecar_path(path), info.to_json().encode())
    return info


def read_info(program: str | Path, *, verify: bool = True) -> ProgramInfo:
    """The sidecar of ``program``, checked against the ``.pte`` bytes when ``verify``."""
    program, side = Path(program), sidecar_path(program)
    if not program.exists():
        raise ProgramError(f"no training program at {program}; create one with `pocketlearn export MODEL -o {program}`")
    if not side.exists():
        raise ProgramError(f"{program} has no sidecar {side.name} (what the program expects and how to map it back); "
                           "copy it along with the .pte, or export again")
    try:
        values = json.loads(side.read_text())
        info = ProgramInfo.from_dict(values)
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as err:
        raise ProgramError(f"sidecar {side} is corrupt ({type(err).__name__}); export again") from err
    if info.format_version != FORMAT_VERSION:
        raise ProgramError(f"{side} has format version {info.format_version}, this pocketlearn reads "
                           f"{FORMAT_VERSION}; export again with this version")
    if verify and file_sha256(program) != info.sha256:
        raise ProgramError(f"{program} does not match its sidecar {side.name} (SHA-256 differs): the .pte is "
                           "truncated or corrupt, or was replaced without its sidecar; export again")
    return info

