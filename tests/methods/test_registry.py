"""Method facts live on the method classes; every table of them is built from the registry."""

import pytest
import torch
from torch import nn

import pocketlearn.methods as registry
from pocketlearn.devices import get_device
from pocketlearn.errors import ConfigError
from pocketlearn.export.executorch import exportable_methods, prepare_method
from pocketlearn.federated.experiment import build_server
from pocketlearn.federated.mixed import Expansion, kind_of, mixed_methods, round_options
from pocketlearn.federated.simulate import LocalTraining
from pocketlearn.memory import plan
from pocketlearn.memory.planner import quality_order
from pocketlearn.methods import GradientMethod, get_method_class, methods_where
from pocketlearn.models import build_model, get_model_spec
from tests.federated.configs import config_with


class Toy(GradientMethod):
    """A new method as a user would write it: every weight trains, and its facts are its class attributes."""

    name = "toy"
    wire_kind = "dense"
    quality_rank = 15  # between backprop (10) and lora (20)
    exportable = True

    def select_trainable(self, model: nn.Module) -> nn.Module:
        return model.requires_grad_(True)


@pytest.fixture
def toy(monkeypatch):
    """The one registry line a new method adds."""
    monkeypatch.setitem(registry._REGISTRY, "toy", f"{__name__}:Toy")
    return Toy


def test_the_facts_give_the_tables_they_replaced():
    assert quality_order() == ["backprop", "lora", "sparse", "tinytl", "bias", "binary", "mezo", "pepita"]
    assert {m: kind_of(m) for m in mixed_methods()} == {
        "backprop": "dense", "bias": "dense", "sparse": "dense", "lora": "lora", "mezo": "zo"}
    assert exportable_methods() == ["backprop", "bias", "sparse", "lora"]
    assert methods_where(lambda m: m.takes_momentum) == ["backprop", "bias", "tinytl", "sparse", "lora"]
    assert methods_where(lambda m: m.vectorizes) == ["backprop"]
    assert methods_where(lambda m: m.sends_seeds) == ["mezo"]


def test_a_new_method_is_one_file_and_one_registry_line(toy):
    assert get_method_class("toy") is toy
    assert quality_order()[:3] == ["backprop", "toy", "lora"]
    assert "toy" in mixed_methods() and kind_of("toy") == "dense"
    assert "toy" in exportable_methods()
    assert LocalTraining("toy", momentum=0.9).method_options() == {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}
    assert not LocalTraining("toy").vectorizable


def test_the_planner_ranks_a_new_method_by_its_quality_rank(toy, monkeypatch):
    batch = get_model_spec("digits-mlp").example_batch(8)

    def best() -> str:
        return plan("digits-mlp", get_device("laptop-16g"), batch, methods=["bias", "toy"],
                    measure_memory=False).recommended

    assert best() == "toy"
    monkeypatch.setattr(toy, "quality_rank", 55)  # after bias (50)
    assert best() == "bias"


def test_a_new_dense_method_joins_mixed_rounds_and_export(toy):
    template = build_model("digits-mlp")
    params = {n: p.detach() for n, p in template.named_parameters()}
    options = round_options("toy", {"lr": 0.1}, seed=0, rnd=1)
    expansion = Expansion.build(template, params, {"toy": options})
    assert expansion.wire["toy"] == {n: p.shape for n, p in params.items()}  # its update travels as is
    assert expansion.updated["toy"] == set(params)
    trainer = prepare_method(get_model_spec("digits-mlp"), "toy", {"lr": 0.1}, None)
    assert trainer.num_trainable() == sum(p.numel() for p in params.values())
    with pytest.raises(ConfigError, match=r"cannot be exported.*'backprop', 'bias', 'sparse', 'lora', 'toy'"):
        prepare_method(get_model_spec("digits-mlp"), "mezo", {}, None)


def test_a_new_method_trains_in_a_mixed_run(toy, tmp_path):
    config = config_with({
        "name": "toy", "rounds": 1, "clients_per_round": 8, "checkpoint": False, "eval": {"every": 1},
        "data": {"name": "digits", "partition": "iid", "num_clients": 8}, "model": {"name": "digits-mlp"},
        "devices": {"mix": {"laptop-16g": 0.5, "phone-4g": 0.5}, "availability": False},
        "client": {"methods": {"laptop-16g": "toy", "phone-4g": "lora"}, "lr": 0.1,
                   "per_method": {"lora": {"rank": 4}}}})
    server, _ = build_server(config, tmp_path)
    before = {n: p.clone() for n, p in server.params.items()}
    record = server.run(1)[0]
    assert set(record.by_method) == {"toy", "lora"}
    assert all(not torch.equal(before[n], p) for n, p in server.params.items())  # toy's dense update lands


def test_methods_without_a_wire_kind_cannot_mix(toy, monkeypatch):
    monkeypatch.setattr(toy, "wire_kind", None)
    with pytest.raises(ConfigError, match=r"'toy' cannot take part in a mixed-method run; use one of \['backprop'"):
        kind_of("toy")
    with pytest.raises(ConfigError, match="'auto' cannot take part"):
        kind_of("auto")
    assert "toy" not in mixed_methods()


@pytest.mark.parametrize(("method", "options", "vectorizable"), [
    ("backprop", (), True),
    ("backprop", (("momentum", 0.9), ("weight_decay", 1e-4)), True),  # the batched engine has both
    ("backprop", (("optimizer", "adamw"),), True),  # per-client Adam moments, batched
    ("backprop", (("checkpointing", True),), False),
    ("backprop", (("embedding_rows", "seen"),), False),
    ("bias", (), False),
    ("mezo", (), False),
    ("auto", (), False),  # a mixed run's placeholder: no method yet, no facts
])
def test_only_backprop_without_checkpointing_or_sparse_rows_vectorizes(method, options, vectorizable):
    assert LocalTraining(method, options=options).vectorizable is vectorizable


def test_only_methods_that_take_momentum_get_the_clients_momentum():
    assert "momentum" in LocalTraining("tinytl", momentum=0.5).method_options()
    for method in ("mezo", "pepita", "binary", "auto"):
        assert LocalTraining(method, momentum=0.5).method_options() == {"lr": 0.05}


def test_the_default_facts_take_part_in_nothing():
    base = registry.TrainingMethod
    assert (base.wire_kind, base.exportable, base.vectorizes, base.takes_momentum, base.sends_seeds) == (
        None, False, False, False, False)
    assert base.quality_rank > max(get_method_class(m).quality_rank for m in registry.available_methods())
