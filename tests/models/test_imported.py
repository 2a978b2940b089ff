import sys

import pytest
import torch

from pocketlearn.errors import ConfigError
from pocketlearn.models import build_model, get_model_spec
from pocketlearn.models.imported import imported_spec

CNN = "tests.models.custom_net:small_cnn"


def test_an_import_path_is_a_model_spec_with_the_shapes_its_module_carries():
    imported_spec.cache_clear()
    torch.manual_seed(0)
    spec = get_model_spec(CNN)
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(1))  # reading the shapes did not move a seeded run's random stream
    assert (spec.name, spec.task, spec.input_shape, spec.num_classes) == (CNN, "classification", (64,), 10)
    x, y = spec.example_batch(3)
    assert build_model(CNN)(x).shape == (3, 10) and y.shape == (3,)
    assert build_model(CNN) is not build_model(CNN)  # a fresh model each time, as for a registered name


@pytest.mark.parametrize(("name", "message"), [
    ("tests.models.no_such_net:small", r"model 'tests.models.no_such_net:small': module 'tests.models.no_such_net' "
                                       r"does not import \(ModuleNotFoundError: No module named"),
    ("tests.models.custom_net:large_cnn", r"module 'tests.models.custom_net' has no attribute 'large_cnn'"),
    ("tests.models.custom_net:NOT_CALLABLE", r"'NOT_CALLABLE' is not callable \(type 'int'\); name a function"),
    ("tests.models.custom_net:not_a_module", r"calling it returned type 'dict', not an nn.Module"),
    ("gpt-5", r"unknown model 'gpt-5'; choose one of \[.*\], or give your own as 'package.module:function'"),
    ("my-nets:cnn", r"unknown model 'my-nets:cnn'.*'package.module:function'"),
])
def test_a_name_that_does_not_give_a_model_says_why(name, message):
    with pytest.raises(ConfigError, match=message):
        get_model_spec(name)


def test_a_module_without_shapes_cannot_make_an_example_batch():
    spec = get_model_spec("tests.models.custom_net:bare_mlp")
    assert build_model(spec.name)(torch.randn(2, 64)).shape == (2, 10)  # it trains where data gives the shapes
    with pytest.raises(ConfigError, match="does not say its input shape: set input_shape and num_classes"):
        spec.example_batch(2)


def test_a_module_in_the_current_folder_resolves_here_and_in_the_measuring_process(tmp_path, monkeypatch):
    from pocketlearn.memory import measure

    (tmp_path / "pl_cwd_net.py").write_text("from torch import nn\n\ndef net():\n    return nn.Linear(64, 10)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])  # as a console script
    monkeypatch.delitem(sys.modules, "pl_cwd_net", raising=False)
    name = "pl_cwd_net:net"
    assert sum(p.numel() for p in build_model(name).parameters()) == 650
    sys.modules.pop("pl_cwd_net")
    batch = (torch.randn(4, 64), torch.randint(0, 10, (4,)))
    assert measure(name, "backprop", batch, steps=1, warmup=0).num_trainable == 650
