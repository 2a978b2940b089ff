"""Peak memory and time of a training step, measured in a fresh process.

The child process imports everything a step needs (torch, the optimizers, the method, the model's
libraries) and records its RSS as the baseline before the model exists. Training peak = VmHWM during the
steps (reset after warm-up) − baseline: weights, gradients, optimizer state, activations and temporaries
all count, because they are all resident. One thing is taken out: shared-library pages that the first
step faults in (the kernels' machine code, 3-15 MiB on x86-64). They are file-backed and shared by every
process that runs those kernels, and they do not grow with the model or the batch.
Inference is measured the same way in its own fresh process.
"""

from __future__ import annotations

import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from pocketlearn.errors import PocketlearnError
from pocketlearn.methods.base import Batch

ModelFactory = str | Callable[[], nn.Module]

# Large allocations go straight to mmap and back to the OS when freed, so RSS tracks live tensors.
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}


class MeasurementError(PocketlearnError, RuntimeError):
    """The measuring process failed; the message carries its traceback."""


@dataclass(frozen=True)
class Measurement:
    method: str  # "inference" for a forward-only measurement
    peak_bytes: int
    baseline_bytes: int
    seconds_per_step: float
    num_trainable: int
    losses: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(model: ModelFactory, method: str, batch: Batch, *, options: dict[str, Any] | None = None,
            steps: int = 3, warmup: int = 1, threads: int | None = None, timeout: float = 900.0) -> Measurement:
    """Measure ``steps`` training steps of ``method`` (or ``"inference"``) on ``batch`` in a fresh process.

    ``model`` is a registered model name (:mod:`pocketlearn.models`) or a factory function importable by
    its qualified name (defined at module level in an importable module, not in ``__main__``).
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps should be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    job = pickle.dumps((model, method, batch, dict(options or {}), steps, warmup, threads))
    with tempfile.TemporaryDirectory(prefix="pocketlearn-measure-") as tmp:
        result_path = Path(tmp) / "result.pkl"
        command = [sys.executable, "-m", "pocketlearn.memory.measure", str(result_path)]
        try:
            done = subprocess.run(command, input=pickle.dumps((sys.path, job)), capture_output=True,
                                  timeout=timeout, env={**os.environ, **_MALLOC_ENV}, check=False)
        except subprocess.TimeoutExpired as err:
            raise MeasurementError(f"measuring {method} took longer than {timeout:.0f} s; lower steps or batch"
                                   ) from err
        if not result_path.exists():
            tail = done.stderr.decode(errors="replace")[-3000:]
            raise MeasurementError(f"the process measuring {method} died with exit {done.returncode} "
                                   f"(out of memory?):\n{tail}")
        kind, payload = pickle.loads(result_path.read_bytes())
    if kind == "error":
        raise MeasurementError(f"measuring {method} failed in the child process:\n{payload}")
    return Measurement(**payload)


def _worker(result_path: str) -> None:
    """Entry point of the fresh process: read the job from stdin, write the result to ``result_path``."""
    path, job = pickle.load(sys.stdin.buffer)
    sys.path[:] = path
    try:
        result: tuple[str, Any] = ("ok", _run(*pickle.loads(job)))
    except BaseException:  # noqa: BLE001 - everything goes back to the parent as text
        result = ("error", traceback.format_exc())
    Path(result_path).write_bytes(pickle.dumps(result))


def _run(model: ModelFactory, method: str, batch: Batch, options: dict[str, Any], steps: int, warmup: int,
         threads: int | None) -> dict[str, Any]:
    import torch

    from pocketlearn.memory import rss

    if threads:
        torch.set_num_threads(threads)
    factory = _import_everything(model, method, options.get("base", "fp32"))
    rss.release_free_memory()
    baseline, baseline_code = rss.current_rss(), rss.library_rss()
    net = factory()
    run_step, trainable = _stepper(net, method, options)
    for _ in range(warmup):
        run_step(batch)
    rss.reset_peak()
    times, losses = [], []
    for _ in range(steps):
        start = time.perf_counter()
        losses.append(run_step(batch))
        times.append(time.perf_counter() - start)
    peak = rss.peak_rss() - (rss.library_rss() - baseline_code)
    return {"method": method, "peak_bytes": peak - baseline, "baseline_bytes": baseline,
            "seconds_per_step": statistics.median(times), "num_trainable": trainable, "losses": tuple(losses)}


def _import_everything(model: ModelFactory, method: str, base: str) -> Callable[[], nn.Module]:
    """Import (and warm up) every module a step may touch, so the baseline holds them all.

    Returns the factory; a registered model is loaded with its frozen base stored as ``base``.
    """
    import torch

    from pocketlearn.methods import get_method_class

    if method != "inference":
        get_method_class(method)
    dummy = torch.nn.Parameter(torch.zeros(2))
    for opt in (torch.optim.SGD([dummy], lr=0.1, momentum=0.9), torch.optim.AdamW([dummy])):
        dummy.grad = torch.ones(2)
        opt.step()
    if isinstance(model, str):
        from pocketlearn.models import get_model_spec

        spec = get_model_spec(model)
        for module in spec.imports:
            __import__(module)
        return lambda: spec.build_with_base(base)
    return model


def _stepper(net: nn.Module, method: str, options: dict[str, Any]) -> tuple[Callable[[Batch], float], int]:
    import torch

    from pocketlearn.methods import make_method
    from pocketlearn.methods.base import forward_loss, logits_of
    from pocketlearn.quant import quantize_base

    if method == "inference":
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        quantize_base(net, options.get("base", "fp32"))

        def infer(batch: Batch) -> float:  # a prediction (an LM: its loss, as evaluation and MeZO compute it)
            with torch.no_grad():
                if batch[1].dim() == 2:
                    return float(forward_loss(net, batch))
                return float(logits_of(net(batch[0])).float().mean())

        return infer, 0
    trainer = make_method(method, net, **options)
    return trainer.step, trainer.num_trainable()


if __name__ == "__main__":
    _worker(sys.argv[1])
