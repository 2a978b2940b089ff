"""What travels in a Flower message: a round's work for one client, and what the client sends back.

The weights and the update travel as our own codec payloads (the same bytes ``fed simulate`` counts), wrapped
in a one-array ``ArrayRecord`` so Flower chunks large models; everything else is a small ``ConfigRecord``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # a device's supervisor and its query handler never load torch
    from pocketlearn.federated.privacy.report import LocalNoise
    from pocketlearn.federated.simulate import LocalTraining

TRAIN = "train"
QUERY = "query"
SEEDS = "seeds"  # the uplink carries MeZO's (seed, projected gradient) pairs, not a delta


@dataclass(frozen=True)
class TrainRequest:
    """One client's round: start from ``weights`` (decoded with ``down_codec``), train with ``local``.

    Before it encodes its update the device clips and noises it when ``local_dp`` is set (local differential
    privacy), and adds the residual it kept of its earlier rounds when ``error_feedback`` is set.
    """

    rnd: int
    client_id: int
    local: LocalTraining
    weights: bytes
    down_codec: str = "float32"
    up_codec: str = "float32"  # a codec spec, or SEEDS
    codec_seed: int = 4
    local_dp: LocalNoise | None = None
    error_feedback: bool = False  # the uplink codec is biased: carry what it drops into the next round
    run_id: str = ""  # the server's run (a fresh start gets a new one): what device-side state is kept for

    def to_records(self) -> Any:
        from flwr.app import ConfigRecord, RecordDict

        meta: dict[str, Any] = {"round": self.rnd, "client-id": self.client_id, "local": _local_to_json(self.local),
                "down-codec": self.down_codec, "up-codec": self.up_codec, "codec-seed": self.codec_seed,
                "local-dp": json.dumps(self.local_dp.to_dict() if self.local_dp else None),
                "error-feedback": self.error_feedback, "run-id": self.run_id}
        return RecordDict({"meta": ConfigRecord(meta), "payload": _payload_record(self.weights)})

    @classmethod
    def from_records(cls, content: Any) -> TrainRequest:
        m = content["meta"]
        return cls(int(m["round"]), int(m["client-id"]), _local_from_json(str(m["local"])),
                   _payload_bytes(content["payload"]), str(m["down-codec"]), str(m["up-codec"]),
                   int(m["codec-seed"]), _local_dp_from_json(str(m.get("local-dp", "null"))),
                   bool(m.get("error-feedback", False)), str(m.get("run-id", "")))


@dataclass(frozen=True)
class TrainReply:
    """A client's update as it travels: a codec payload (delta or seeds), its sample count and mean loss."""

    client_id: int
    num_samples: int
    loss: float
    payload: bytes
    seconds: float = 0.0  # wall-clock the device spent (load, train, encode)

    def to_records(self) -> Any:
        from flwr.app import ConfigRecord, RecordDict

        meta: dict[str, Any] = {"client-id": self.client_id, "num-samples": self.num_samples, "loss": float(self.loss),
                "seconds": float(self.seconds)}
        return RecordDict({"meta": ConfigRecord(meta), "payload": _payload_record(self.payload)})

    @classmethod
    def from_records(cls, content: Any) -> TrainReply:
        m = content["meta"]
        return cls(int(m["client-id"]), int(m["num-samples"]), float(m["loss"]), _payload_bytes(content["payload"]),
                   float(m["seconds"]))


@dataclass(frozen=True)
class DeviceInfo:
    """A device's answer to the server's query: which client's data it holds, on which device preset."""

    client_id: int
    num_examples: int
    device: str

    def to_records(self) -> Any:
        from flwr.app import ConfigRecord, RecordDict

        return RecordDict({"device": ConfigRecord({"client-id": self.client_id, "num-examples": self.num_examples,
                                                   "device": self.device})})

    @classmethod
    def from_records(cls, content: Any) -> DeviceInfo:
        d = content["device"]
        return cls(int(d["client-id"]), int(d["num-examples"]), str(d["device"]))


def _payload_record(payload: bytes) -> Any:
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({"bytes": Array(np.frombuffer(payload, dtype=np.uint8))})


def _payload_bytes(record: Any) -> bytes:
    return bytes(record["bytes"].numpy().tobytes())


def _local_to_json(local: LocalTraining) -> str:
    return json.dumps(asdict(local))


def _local_dp_from_json(text: str) -> LocalNoise | None:
    fields = json.loads(text)
    if fields is None:  # (the privacy package loads dp-accounting: a second per message, so only when needed)
        return None
    from pocketlearn.federated.privacy.report import LocalNoise

    return LocalNoise.from_dict(fields)


def _local_from_json(text: str) -> LocalTraining:
    from pocketlearn.federated.simulate import LocalTraining

    fields = json.loads(text)
    fields["options"] = tuple((str(k), v) for k, v in fields.get("options", ()))
    return LocalTraining(**fields)
