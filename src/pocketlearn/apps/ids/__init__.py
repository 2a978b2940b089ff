"""Intrusion detection that stays fresh under drift.

A cloud model is fine-tuned on each device when its drift detector fires, swapped in only when better, and
optionally shared by federated averaging.
"""

from pocketlearn.apps.ids.data import Table, load_kdd, load_kdd_csv, load_phishing
from pocketlearn.apps.ids.device import DeviceLearner, LearnerConfig, check_budget, fine_tune, make_detector
from pocketlearn.apps.ids.run import IdsConfig, IdsResult, run_ids
from pocketlearn.apps.ids.stream import DeviceStream, Scenario, ScenarioConfig, build_scenario

__all__ = [
    "DeviceLearner", "DeviceStream", "IdsConfig", "IdsResult", "LearnerConfig", "Scenario", "ScenarioConfig",
    "Table", "build_scenario", "check_budget", "fine_tune", "load_kdd", "load_kdd_csv", "load_phishing",
    "make_detector", "run_ids",
]
