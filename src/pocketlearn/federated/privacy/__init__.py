"""Differential privacy for federated training: clip, noise, and an accountant that composes dp-accounting events.

The pieces, each usable alone::

    mech = PrivacyMechanism(DPConfig(clip=1.0, noise_multiplier=1.1), expected_clients=10, num_clients=1000)
    mech.check_run(rounds=500)              # PrivacyBudgetError before a run that would exceed target_epsilon
    means = mech.privatize(updates, rnd)    # clipped, noised, fixed-denominator mean delta per parameter
    mech.epsilon_so_far()

or all at once as the ``dp-fedavg`` strategy (:mod:`pocketlearn.federated.strategies.dp_fedavg`, not imported here
so that the strategies registry can import it without a cycle).
"""

from pocketlearn.federated.privacy.accountant import (
    PrivacyAccountant,
    PrivacyBudgetError,
    calibrate_noise,
    central_round_event,
    epsilon,
    local_report_event,
    rounds_within,
)
from pocketlearn.federated.privacy.clipping import AdaptiveClip, FixedClip, clip_to_norm_
from pocketlearn.federated.privacy.config import DPConfig
from pocketlearn.federated.privacy.mechanism import PrivacyMechanism
from pocketlearn.federated.privacy.noise import add_central_noise_, add_local_noise_, derived_generator

__all__ = [
    "AdaptiveClip", "DPConfig", "FixedClip", "PrivacyAccountant", "PrivacyBudgetError", "PrivacyMechanism",
    "add_central_noise_", "add_local_noise_", "calibrate_noise", "central_round_event", "clip_to_norm_",
    "derived_generator", "epsilon", "local_report_event", "rounds_within",
]
