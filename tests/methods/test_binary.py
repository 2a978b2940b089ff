import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pocketlearn.errors import ConfigError, DataError, UnsupportedModelError
from pocketlearn.evaluate import evaluate
from pocketlearn.methods import make_method
from pocketlearn.methods.binary import Bop, SignSTE, bop_flips, pack_signs, unpack_signs
from pocketlearn.models import mlp
from tests.conftest import assert_continues_identically, eval_batches, train_batches


@pytest.mark.parametrize("optimizer", ["bop", "latent"])
def test_binary_learns_digits(digits, optimizer):
    model = mlp(64, (128, 128), 10)
    before = evaluate(model, eval_batches(digits))
    method = make_method("binary", model, optimizer=optimizer)
    for batch in train_batches(digits, epochs=2):
        method.step(batch)
    after = evaluate(method.model, eval_batches(digits))
    assert list(method.binary_layers) == ["3"]  # the middle layer; the first and last stay real
    assert after["loss"] < before["loss"] * 0.3
    assert after["accuracy"] > 0.9


def test_bop_weights_are_exactly_plus_minus_one_after_training(digits):
    model = mlp(64, (128, 128), 10)
    method = make_method("binary", model)
    start = model[3].weight.clone()
    for batch in train_batches(digits):
        method.step(batch)
    weight = model[3].weight
    assert torch.equal(weight.abs(), torch.ones_like(weight))
    assert 0 < (weight != start).float().mean() < 1  # some flipped, not all
    assert set(method.trainable_parameters()) == {n for n, _ in model.named_parameters()}


def test_bop_alone_trains_an_all_binary_net(digits):
    batches = train_batches(digits, epochs=2)
    losses = {}
    for threshold in (1e-6, 1e9):  # 1e9: no weight ever flips, only the biases train
        torch.manual_seed(0)
        method = make_method("binary", mlp(64, (128, 128), 10), keep_first_last_real=False, threshold=threshold)
        for batch in batches:
            method.step(batch)
        losses[threshold] = evaluate(method.model, eval_batches(digits))["loss"]
    assert losses[1e-6] < 0.5 * losses[1e9]


def test_bop_flips_only_under_the_rule():
    w = nn.Parameter(torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, -1.0]))
    opt = Bop([w], threshold=0.2, gamma=0.5)
    w.grad = torch.tensor([1.0, -1.0, -1.0, 1.0, 0.3, 0.0])  # m = 0.5 g = [.5, -.5, -.5, .5, .15, 0]
    opt.step()
    # flip where |m| > 0.2 and sign(m) == sign(w): indices 0 and 2; index 4 agrees but is too weak
    assert w.tolist() == [-1.0, 1.0, 1.0, -1.0, 1.0, -1.0]
    w.grad = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.3, 0.0])  # m[4] = 0.5 * 0.15 + 0.5 * 0.3 = 0.225 > 0.2
    opt.step()
    # 4 flips; 0 and 2 stay: m kept its sign, which now opposes w's (a flipped weight does not flip back)
    assert w.tolist() == [-1.0, 1.0, 1.0, -1.0, -1.0, -1.0]
    torch.testing.assert_close(opt.state[w]["m"], torch.tensor([0.25, -0.25, -0.25, 0.25, 0.225, 0.0]))
    assert not bop_flips(w, opt.state[w]["m"], 0.2).any()


def test_ste_gradient_matches_clipped_identity_reference():
    w = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5], requires_grad=True)
    grad = torch.randn(7)
    ours = SignSTE.apply(w)
    (g_ours,) = torch.autograd.grad(ours, w, grad)
    clipped = w.clamp(-1, 1)
    reference = clipped + (torch.where(w >= 0, 1.0, -1.0) - clipped).detach()
    (g_ref,) = torch.autograd.grad(reference, w, grad)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(g_ours, g_ref)


@pytest.mark.parametrize("layer, x", [(nn.Linear(6, 5), torch.randn(3, 6)),
                                      (nn.Conv2d(2, 4, 3, padding=1), torch.randn(3, 2, 5, 5))])
@pytest.mark.parametrize("optimizer", ["bop", "latent"])
def test_binary_layer_computes_alpha_times_sign(layer, x, optimizer):
    model = nn.Sequential(nn.Identity(), layer)
    reference = copy.deepcopy(layer)
    method = make_method("binary", model, optimizer=optimizer, keep_first_last_real=False)
    dims = tuple(range(1, reference.weight.dim()))
    alpha = reference.weight.abs().mean(dims, keepdim=True)
    with torch.no_grad():
        reference.weight.copy_(torch.where(reference.weight >= 0, 1.0, -1.0) * alpha)
    torch.testing.assert_close(method.model(x), reference(x))


def test_latent_weights_stay_clipped_and_cost_more_memory(digits):
    method = make_method("binary", mlp(64, (128, 128), 10), optimizer="latent", lr=0.5)
    for batch in train_batches(digits)[:5]:
        method.step(batch)
    latent = method.binary_layers["3"].weight
    assert latent.abs().max() <= 1 and (latent.abs() == 1).any()
    bop = make_method("binary", mlp(64, (128, 128), 10)).memory_traits()
    assert (bop.optimizer_slots, method.memory_traits().optimizer_slots) == (1, 2)
    assert method.memory_traits().extra_bytes == 4 * 128 * 128


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple), seed=st.integers(0, 2**16))
def test_pack_unpack_round_trip(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, shape, generator=gen).float() * 2 - 1
    data = pack_signs(signs)
    assert len(data) == math.ceil(signs.numel() / 8)
    torch.testing.assert_close(unpack_signs(data, shape), signs)


def test_unpack_names_a_size_mismatch():
    with pytest.raises(DataError, match="3 bytes; shape \\(5, 5\\) needs 4"):
        unpack_signs(b"abc", (5, 5))


def test_packed_weights_are_one_bit_each_and_load_back(digits, digits_cnn):
    method = make_method("binary", digits_cnn)
    method.step(train_batches(digits, image=True)[0])
    packed = method.packed_weights()
    assert {k: len(v) for k, v in packed.items()} == {"3.weight": math.ceil(8 * 4 * 9 / 8),
                                                      "7.weight": math.ceil(64 * 32 / 8)}
    other = make_method("binary", copy.deepcopy(digits_cnn))
    with torch.no_grad():
        other.binary_layers["3"].weight.mul_(-1)
    other.load_packed_weights(packed)
    for name in packed:
        torch.testing.assert_close(other.model.get_parameter(name), digits_cnn.get_parameter(name))


def test_resuming_from_state_dict_continues_identically(digits):
    batches = train_batches(digits)[:4]
    model = mlp(64, (128, 128), 10)
    fresh = copy.deepcopy(model)
    method = make_method("binary", model)
    for batch in batches[:2]:
        method.step(batch)
    resumed = make_method("binary", fresh)
    resumed.model.load_state_dict(method.model.state_dict())
    resumed.load_state_dict(copy.deepcopy(method.state_dict()))
    assert_continues_identically(method, resumed, batches[2:])


def test_wrapping_a_binary_model_again_keeps_it(digits):
    method = make_method("binary", mlp(64, (128, 128), 10))
    method.step(train_batches(digits)[0])
    again = make_method("binary", copy.deepcopy(method.model))
    assert torch.equal(again.binary_layers["3"].alpha, method.binary_layers["3"].alpha)
    assert torch.equal(again.binary_layers["3"].weight, method.binary_layers["3"].weight)


def test_nothing_to_binarise_is_a_clear_error(digits_mlp):
    with pytest.raises(UnsupportedModelError, match="keep_first_last_real=False"):
        make_method("binary", digits_mlp)


def test_bad_config_names_every_problem(digits_mlp):
    with pytest.raises(ConfigError, match="optimizer.*threshold.*gamma"):
        make_method("binary", digits_mlp, optimizer="adam", threshold=-1, gamma=2.0)
