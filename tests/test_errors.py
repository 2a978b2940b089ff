import math
from dataclasses import dataclass

import pytest

from pocketlearn.errors import ConfigError, Validated, number_problem, raise_problems


def test_no_problems_raise_nothing():
    raise_problems("fed serve", [])


def test_every_problem_is_reported_at_once_under_one_head():
    with pytest.raises(ConfigError) as err:
        raise_problems("fed serve", ["port must be in 1..65535, got 0", "min_devices must be >= 0, got -1"])
    assert str(err.value) == "fed serve: port must be in 1..65535, got 0; min_devices must be >= 0, got -1"


def test_problems_without_a_head_or_one_a_line():
    with pytest.raises(ConfigError) as err:
        raise_problems("", ["a is wrong", "b is wrong"])
    assert str(err.value) == "a is wrong; b is wrong"
    with pytest.raises(ConfigError) as err:
        raise_problems("this config cannot run on real devices", ["a is wrong", "b is wrong"], lines=True)
    assert str(err.value) == "this config cannot run on real devices:\n  a is wrong\n  b is wrong"


@dataclass(frozen=True)
class Window(Validated):
    low: float = 0.0
    high: float = 1.0

    def problems(self) -> list[str]:
        out = [*super().problems(), *number_problem("low", self.low, lambda x: x >= 0, ">= 0")]
        if not self.high > self.low:
            out.append(f"high should be above low ({self.low}), got {self.high}")
        return out


@dataclass(frozen=True)
class NamedWindow(Window):
    name: str = "w"

    def problems(self) -> list[str]:
        return [*super().problems(), *([] if self.name else ["name should not be empty"])]


def test_a_validated_dataclass_reports_its_class_and_every_problem_of_its_hierarchy():
    NamedWindow()  # valid: no error
    with pytest.raises(ConfigError) as err:
        NamedWindow(low=-1.0, high=-2.0, name="")
    assert str(err.value) == ("NamedWindow: low should be a number >= 0, got -1.0; high should be above low (-1.0), "
                              "got -2.0; name should not be empty")


@pytest.mark.parametrize("value", [True, math.nan, math.inf, "1", None, -1])
def test_number_problem_refuses_bools_non_finite_non_numbers_and_out_of_range(value):
    assert number_problem("x", value, lambda x: x >= 0, ">= 0") == [f"x should be a number >= 0, got {value!r}"]


@pytest.mark.parametrize("value", [0, 0.5, 3])
def test_number_problem_accepts_numbers_in_range(value):
    assert number_problem("x", value, lambda x: x >= 0, ">= 0") == []


def test_the_configs_of_methods_strategies_privacy_and_training_share_it():
    from pocketlearn.federated.privacy.config import DPConfig
    from pocketlearn.federated.strategies.fedavg import FedAvg
    from pocketlearn.methods.base import MethodConfig
    from pocketlearn.trainer import TrainerConfig

    assert all(issubclass(c, Validated) for c in (DPConfig, FedAvg, MethodConfig, TrainerConfig))
    with pytest.raises(ConfigError) as err:
        MethodConfig(lr=0)
    assert str(err.value) == "MethodConfig: lr should be positive, got 0"
    with pytest.raises(ConfigError) as err:
        DPConfig(clip=0, delta=2)
    assert str(err.value) == "DPConfig: clip should be a number > 0, got 0; delta should be a number in (0, 1), got 2"
