"""Simulated clients as devices: which device each client is, which method fits it, and how long a round takes it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from pocketlearn.devices import DeviceProfile, format_bytes, get_device
from pocketlearn.errors import BudgetError, ConfigError
from pocketlearn.methods.base import Batch

# FLOP/s of the reference device (compute = 1.0: a 2-core laptop CPU running small fp32 models in PyTorch).
REFERENCE_FLOPS = 2e10


@dataclass(frozen=True)
class DeviceFit:
    """What a device class will train with: the configured method, the planner's pick, or nothing (reported)."""

    device: DeviceProfile
    method: str | None
    estimated_bytes: int | None
    note: str = ""


def assign_devices(num_clients: int, mix: dict[str, float], seed: int, profiles_file: str | None = None
                   ) -> tuple[list[DeviceProfile], np.ndarray]:
    """Give each client a device drawn by share (deterministic in ``seed``): (device list, index per client)."""
    try:
        devices = [get_device(name, profiles_file) for name in mix]
    except ConfigError as err:
        raise ConfigError(f"devices.mix: {err}") from None
    shares = np.array(list(mix.values()), dtype=float)
    which = np.random.default_rng(seed).choice(len(devices), size=num_clients, p=shares / shares.sum())
    return devices, which.astype(np.int16)  # 2 bytes a client: a million clients cost 2 MB


def fit_method(build: Callable[[], nn.Module], method: str, options: dict, device: DeviceProfile, batch: Batch,
               *, allow_plan: bool, candidates: Sequence[str] | None = None,
               candidate_options: dict[str, dict] | None = None) -> DeviceFit:
    """Check the method's estimated peak against the device; if it does not fit, ask the planner (estimates).

    ``candidates`` (with their options) limits what the planner may pick instead.
    """
    from pocketlearn.memory.estimate import estimate
    from pocketlearn.methods import make_method

    need = estimate(make_method(method, build(), **options), batch).total
    if need <= device.memory_budget_bytes:
        return DeviceFit(device, method, need)
    too_big = f"{method} needs ~{format_bytes(need)}, {device.name} has {format_bytes(device.memory_budget_bytes)}"
    if not allow_plan:
        return DeviceFit(device, None, need, f"{too_big}; its clients are left out (client.fit = 'report')")
    fit = plan_method(build, device, batch, candidates, candidate_options)
    return replace(fit, estimated_bytes=need if fit.method is None else fit.estimated_bytes,
                   note=f"{too_big}; {fit.note}")


def plan_method(build: Callable[[], nn.Module], device: DeviceProfile, batch: Batch,
                candidates: Sequence[str] | None = None, options: dict[str, dict] | None = None) -> DeviceFit:
    """The planner's pick (estimates) among ``candidates`` for ``device``, or None with the reason."""
    from pocketlearn.memory.planner import plan

    try:
        chosen = plan(build, device, batch, methods=candidates, options=options, measure_memory=False)
    except BudgetError as err:
        return DeviceFit(device, None, None, f"no method fits: {err}")
    row = next(r for r in chosen.rows if r.method == chosen.recommended)
    return DeviceFit(device, chosen.recommended, row.peak_bytes, f"the planner picked {chosen.recommended}")


def train_flops_per_sample(model: nn.Module, example: torch.Tensor) -> float:
    """Forward + backward FLOPs of one training sample (backward ~ 2x forward).

    Counted from the shapes of the Linear and Conv layers (the multiply-adds that dominate); cheaper than
    PyTorch's FLOP counter, whose imports alone take a second.
    """
    total = 0

    def count(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += 2 * module.in_features * output.numel()
        elif isinstance(module, nn.Conv1d | nn.Conv2d):
            kernel = int(torch.tensor(module.kernel_size).prod())
            total += 2 * (module.in_channels // module.groups) * kernel * output.numel()

    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]
    hooks = [m.register_forward_hook(count) for m in layers]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(example[:1])  # in training mode, one example would move batch norms' statistics
    finally:
        model.train(training)
        for h in hooks:
            h.remove()
    return 3.0 * max(total, 1)


_STEP_COSTS: dict[tuple[object, ...], dict[str, float]] = {}


def step_cost_ratios(build: Callable[[], nn.Module], methods: dict[str, dict], batch: Batch, *,
                     steps: int = 3) -> dict[str, float]:
    """Each method's time per training step relative to backprop's, measured here on this model and batch.

    A simulated device trains a method for its FLOP count times this ratio, so MeZO's two forwards or a frozen
    backbone's short backward cost what they really cost, not backprop's FLOPs. Measured once per process for a
    given model, methods and batch (the fastest of ``steps`` steps after a warm-up one).
    """
    from pocketlearn.methods import make_method

    model = build()
    key = (tuple((n, tuple(p.shape)) for n, p in model.named_parameters()), tuple(batch[0].shape),
           tuple(sorted((m, repr(sorted(o.items()))) for m, o in methods.items())))
    if key not in _STEP_COSTS:
        def seconds(name: str, options: dict) -> float:
            method = make_method(name, build(), **options)
            method.step(batch)
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                method.step(batch)
                times.append(time.perf_counter() - start)
            return min(times)

        reference = seconds("backprop", {"lr": 1e-9})  # a step that changes (almost) nothing
        _STEP_COSTS[key] = {m: seconds(m, o) / reference for m, o in methods.items()}
    return dict(_STEP_COSTS[key])


def simulated_seconds(device: DeviceProfile, *, samples: np.ndarray, flops_per_sample: float, down_bytes: int,
                      up_bytes: np.ndarray) -> np.ndarray:
    """Wall-clock of clients' rounds on a device: download, train ``samples``, upload (one entry per client)."""
    train = samples * flops_per_sample / (device.compute * REFERENCE_FLOPS)
    return down_bytes / device.downlink_bytes_per_s + train + up_bytes / device.uplink_bytes_per_s
