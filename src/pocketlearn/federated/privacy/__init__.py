"""Differential privacy for federated training: clip, noise, and an accountant that composes dp-accounting events.

The pieces, each usable alone::

    mech = PrivacyMechanism(DPConfig(clip=1.0, noise_multiplier=1.1), expected_clients=10, num_clients=1000)
    mech.check_run(rounds=500)              # PrivacyBudgetError before a run that would exceed target_epsilon
    means = mech.privatize(updates, rnd)    # clipped, noised, fixed-denominator mean delta per parameter
    mech.epsilon_so_far()

or all at once as the ``dp-fedavg`` strategy (:mod:`pocketlearn.federated.strategies.dp_fedavg`, not imported here
so that the strategies registry can import it without a cycle). Names load on first use: a device that only
needs :class:`LocalNoise` does not load dp-accounting and scipy (seconds, and memory a small device lacks).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {
    "accountant": ("PrivacyAccountant", "PrivacyBudgetError", "calibrate_noise", "central_round_event", "epsilon",
                   "local_report_event", "rounds_within"),
    "clipping": ("AdaptiveClip", "FixedClip", "clip_to_norm_"),
    "config": ("DPConfig", "refuse_for_deployment"),
    "mechanism": ("PrivacyMechanism",),
    "noise": ("add_central_noise_", "add_local_noise_", "derived_generator", "secure_generator"),
    "report": ("LocalNoise",),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_HOME_OF)


def __getattr__(name: str) -> Any:
    if name not in _HOME_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOME_OF[name]}"), name)
