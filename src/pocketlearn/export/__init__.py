"""The training step exported for a device runtime (ExecuTorch), and training with that runtime alone.

``export_training`` writes ``train.pte`` + ``train.pte.json``; ``device_train`` steps it with the runtime's
``forward_backward`` and SGD and returns the state dict pocketlearn's checkpoints hold.
"""

from pocketlearn.export.executorch import export_training, exportable_methods
from pocketlearn.export.program import ProgramError, ProgramInfo, read_info
from pocketlearn.export.runtime import (
    DeviceTrainer,
    DeviceTrainResult,
    device_train,
    fixed_batches,
    plain_state,
    prepare_examples,
    save_trained,
)

__all__ = ["DeviceTrainResult", "DeviceTrainer", "ProgramError", "ProgramInfo", "device_train", "export_training",
           "exportable_methods", "fixed_batches", "plain_state", "prepare_examples", "read_info", "save_trained"]
