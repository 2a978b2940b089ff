from pocketlearn.evaluate import evaluate
from pocketlearn.methods import make_method
from tests.conftest import eval_batches, train_batches


def test_bias_trains_only_biases_and_head(digits, digits_mlp):
    method = make_method("bias", digits_mlp, lr=0.1)
    names = set(method.trainable_parameters())
    assert names == {"1.bias", "3.weight", "3.bias"}


def test_bias_only_learns(digits, digits_mlp):
    first_weight = digits_mlp[1].weight.clone()
    before = evaluate(digits_mlp, eval_batches(digits))
    method = make_method("bias", digits_mlp, lr=0.1)
    for batch in train_batches(digits, epochs=3):
        method.step(batch)
    after = evaluate(method.model, eval_batches(digits))
    assert after["loss"] < before["loss"] * 0.8
    assert (method.model[1].weight == first_weight).all()


def test_a_model_without_biases_is_unsupported():
    import pytest
    from torch import nn

    from pocketlearn.errors import UnsupportedModelError
    from pocketlearn.methods import make_method

    with pytest.raises(UnsupportedModelError, match="nothing to train.*no bias parameters"):
        make_method("bias", nn.Sequential(nn.Linear(4, 4, bias=False)), train_head=False)


def test_the_last_layer_alone_and_batch_norm_with_it():
    from tests.methods.test_lean import tiny_efficientnet

    last = make_method("bias", tiny_efficientnet(), train_biases=False)
    assert set(last.trainable_parameters()) == {"_fc.weight", "_fc.bias"}
    norms = make_method("bias", tiny_efficientnet(), train_biases=False, train_norms=True)
    names = set(norms.trainable_parameters())
    assert {"_fc.weight", "_bn0.weight", "_bn0.bias", "_blocks.1._bn1.weight"} <= names
    assert not any("conv" in n for n in names)
