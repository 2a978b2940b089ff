import copy

import pytest
import torch

from pocketlearn.errors import ConfigError, TrainingError
from pocketlearn.evaluate import evaluate
from pocketlearn.methods import make_method
from pocketlearn.methods.base import forward_loss
from pocketlearn.methods.lora import lora_parameters
from pocketlearn.methods.mezo import MeZO, MezoConfig, noise, replay
from pocketlearn.models import build_model, mlp
from tests.conftest import eval_batches, train_batches


def flat_noise(params, seed):
    """The whole z of one step seed, flattened in the order MeZO draws it: (num_params,)."""
    return torch.cat([noise(p, seed, i).flatten() for i, p in enumerate(params.values())])


def autograd_gradient(model, batch):
    """The true gradient, flattened in sorted-name order (MeZO's order): (num_params,)."""
    model = copy.deepcopy(model).requires_grad_(True)
    forward_loss(model, batch).backward()
    return torch.cat([p.grad.flatten() for _, p in sorted(model.named_parameters())])


@pytest.fixture
def toy():
    """A tiny fp64 MLP 4-6-3 and one batch of 16: finite differences are precise in fp64."""
    model = mlp(4, (6,), 3).double()
    batch = (torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,)))
    return model, batch


def test_projected_gradient_is_the_directional_derivative(toy):
    model, batch = toy
    grad = autograd_gradient(model, batch)
    method = MeZO(model, MezoConfig(eps=1e-4))
    for seed in (1, 2, 3):
        g, _ = method.estimate(batch, seed)
        assert g == pytest.approx(float(grad @ flat_noise(method.params, seed).double()), rel=1e-4)


def test_projected_gradient_times_z_is_unbiased(toy):
    model, batch = toy
    grad = autograd_gradient(model, batch)  # (51,)
    method = MeZO(model, MezoConfig(eps=1e-4))
    total = torch.zeros_like(grad)
    for seed in range(1000):
        total += method.estimate(batch, seed)[0] * flat_noise(method.params, seed).double()
    assert torch.cosine_similarity(total / 1000, grad, dim=0) > 0.95


def test_perturbations_are_undone(digits, digits_mlp):
    batch = train_batches(digits)[0]
    method = MeZO(digits_mlp, MezoConfig(lr=1e-3))
    start = {n: p.clone() for n, p in method.params.items()}
    method.estimate(batch, seed=7)
    for name, p in method.params.items():
        assert (p - start[name]).abs().max() <= 1e-6, name  # float round-off of +εz -2εz +εz only
    method.step(batch)
    (seed, g), = method.history
    for i, (name, p) in enumerate(method.params.items()):
        torch.testing.assert_close(p, start[name] - 1e-3 * g * noise(p, seed, i), rtol=0, atol=1e-6)


@pytest.mark.parametrize("subset", ["all", "lora"])
def test_replay_rebuilds_the_trained_weights(digits, digits_mlp, subset):
    config = MezoConfig(lr=5e-3, subset=subset, n_perturbations=2, weight_decay=0.1, seed=3)
    start = copy.deepcopy(digits_mlp)
    method = MeZO(digits_mlp, config)
    for batch in train_batches(digits)[:6]:
        method.step(batch)
    assert len(method.history) == 12
    copy_of_start = MeZO(start, config).model  # same config seed: the same LoRA init
    replay(copy_of_start, method.history, config)
    for (name, p), (name_r, q) in zip(method.model.state_dict().items(), copy_of_start.state_dict().items(),
                                      strict=True):
        assert name == name_r
        torch.testing.assert_close(q, p, rtol=0, atol=0)  # bit for bit


def test_replay_without_the_round_trip_is_within_round_off(digits, digits_mlp):
    config = MezoConfig(lr=5e-3)
    start = {n: p.clone() for n, p in digits_mlp.named_parameters()}
    method = MeZO(digits_mlp, config)
    for batch in train_batches(digits)[:6]:
        method.step(batch)
    replay(start, method.history, config, round_trip=False)
    for name, p in method.params.items():
        torch.testing.assert_close(start[name], p, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="not a multiple of n_perturbations=4"):
        replay(start, method.history[:5], MezoConfig(n_perturbations=4))


def test_mezo_learns_digits(digits, digits_mlp):
    before = evaluate(digits_mlp, eval_batches(digits))
    method = make_method("mezo", digits_mlp, lr=8e-3)
    for batch in train_batches(digits, epochs=20):
        method.step(batch)
    after = evaluate(method.model, eval_batches(digits))
    assert after["loss"] < before["loss"] * 0.75
    assert after["accuracy"] > 0.45


@pytest.mark.parametrize("subset", ["bias", "lora"])
def test_subset_changes_only_its_parameters(digits, digits_mlp, subset):
    method = make_method("mezo", digits_mlp, subset=subset, rank=4, lr=1e-2)
    start = {n: p.clone() for n, p in method.model.named_parameters()}
    for batch in train_batches(digits)[:5]:
        method.step(batch)
    changed = {n for n, p in method.model.named_parameters() if not torch.equal(p, start[n])}
    expected = set(lora_parameters(method.model)) if subset == "lora" else {"1.bias", "3.bias"}
    assert changed == expected == set(method.trainable_parameters())
    assert not any(p.requires_grad for p in method.model.parameters())


def test_memory_traits_and_errors(digits, digits_mlp):
    traits = make_method("mezo", mlp(64, (8,), 10)).memory_traits()
    assert (traits.activations, traits.gradient_bytes_per_param, traits.optimizer_slots,
            traits.temporary_param_copies) == ("one_layer", 0, 0, 1)
    with pytest.raises(ConfigError, match="eps should be positive.*subset.*n_perturbations"):
        MezoConfig(eps=0, subset="weights", n_perturbations=0)
    with pytest.raises(ConfigError, match="has no biases"):
        make_method("mezo", torch.nn.Linear(4, 2, bias=False), subset="bias")
    method = make_method("mezo", digits_mlp)
    x, y = train_batches(digits)[0]
    start = [p.clone() for p in digits_mlp.parameters()]
    with pytest.raises(TrainingError, match="Lower the learning rate"):
        method.step((x * torch.nan, y))
    for p, q in zip(digits_mlp.parameters(), start, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)  # restored, not updated


def test_resumed_run_draws_the_same_seeds(digits, digits_mlp):
    batches = train_batches(digits)[:6]
    twin = copy.deepcopy(digits_mlp)
    straight = make_method("mezo", digits_mlp, lr=5e-3)
    for batch in batches:
        straight.step(batch)
    first = make_method("mezo", twin, lr=5e-3)
    for batch in batches[:3]:
        first.step(batch)
    resumed = make_method("mezo", twin, lr=5e-3)
    resumed.load_state_dict(first.state_dict())
    for batch in batches[3:]:
        resumed.step(batch)
    assert resumed.history == straight.history
    assert all(torch.equal(p, q) for p, q in zip(twin.parameters(), digits_mlp.parameters(), strict=True))


def test_mezo_lora_lowers_smollm2_loss_on_one_text():
    from pocketlearn.models.pretrained import load_smollm2

    model, tokenizer = load_smollm2()
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids  # (1, T)
    batch = (ids[:, :-1], ids[:, 1:])
    method = make_method("mezo", model, subset="lora", lr=5e-4)  # 1e-3 can diverge on one text
    with torch.no_grad():
        before = forward_loss(method.model, batch).item()
        for _ in range(25):
            method.step(batch)
        after = forward_loss(method.model, batch).item()
    assert after < before - 0.2


def test_a_seed_pool_makes_the_update_one_coefficient_per_seed():
    from pocketlearn.methods.mezo import expand_coefficients, pool_coefficients, pool_seeds

    torch.manual_seed(0)
    model = build_model("digits-mlp")
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = make_method("mezo", model, lr=1e-2, seed_pool=8, pool_seed=5, seed=3)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    for _ in range(20):
        method.step((x, y))
    pool = pool_seeds(5, 8)
    assert {s for s, _ in method.history} <= set(pool)
    delta = expand_coefficients(start, pool_coefficients(method.history, pool), pool, 1e-2)
    for n, p in method.model.named_parameters():
        torch.testing.assert_close(delta[n], p.detach() - start[n], atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="not in the seed pool"):
        pool_coefficients(method.history, pool_seeds(6, 8))


def count_draws(monkeypatch):
    """Count the z draws MeZO makes (calls of ``mezo.noise``): they, not the arithmetic, cost beyond the forwards."""
    from pocketlearn.methods import mezo

    calls = []
    real = mezo.noise

    def counted(*args, **kwargs):
        calls.append(args[1:3])  # (seed, index)
        return real(*args, **kwargs)

    monkeypatch.setattr(mezo, "noise", counted)
    return calls


@pytest.mark.parametrize("n_perturbations", [1, 2])
def test_a_step_draws_z_three_times_per_perturbation_plus_updates(toy, monkeypatch, n_perturbations):
    model, batch = toy
    method = MeZO(model, MezoConfig(n_perturbations=n_perturbations, weight_decay=0.1))
    calls = count_draws(monkeypatch)
    method.step(batch)
    params = len(method.params)  # 4
    # each perturbation: +εz, -2εz, +εz; the last +εz shares its draw with the update (which draws every z once)
    assert len(calls) == params * (4 * n_perturbations - 1)
    calls.clear()
    replay(copy.deepcopy(toy[0]), method.history, method.config)
    assert len(calls) == params * (2 * n_perturbations - 1)  # a round trip and the update share one draw


def test_noise_is_drawn_in_blocks_independent_of_threads_and_buffer():
    import numpy as np

    from pocketlearn.methods.mezo import BLOCK

    big = torch.empty(3, BLOCK + 7)  # 4 blocks, the last one short
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = noise(big, 11, 2)
        torch.set_num_threads(2)
        parallel = noise(big, 11, 2)
        buffered = noise(big, 11, 2, out=torch.empty(big.numel() + 5))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(serial, parallel) and torch.equal(serial, buffered)
    flat = serial.flatten()
    assert not torch.equal(flat[:BLOCK], flat[BLOCK:2 * BLOCK])  # every block has its own generator
    assert abs(flat.mean().item()) < 0.01 and abs(flat.std().item() - 1) < 0.01
    # a tensor of one block draws the z it drew before blocks existed (histories of small models replay alike)
    key = np.random.SeedSequence([11, 2]).generate_state(1, np.uint64)[0]
    small = torch.empty(40, 30)
    assert torch.equal(noise(small, 11, 2), torch.randn(small.shape, generator=torch.Generator().manual_seed(int(key))))
    with pytest.raises(ValueError, match="flat contiguous fp32"):
        noise(big, 11, 2, out=torch.empty(10))


@pytest.mark.parametrize("failing_pass", [1, 2])
def test_a_failing_forward_pass_leaves_the_weights_and_history_alone(toy, failing_pass):
    model, batch = toy

    class Flaky(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.calls = model, 0

        def forward(self, x):
            self.calls += 1
            if self.calls == failing_pass:
                raise RuntimeError("out of memory")
            return self.inner(x)

    method = MeZO(Flaky(), MezoConfig())
    start = {n: p.clone() for n, p in method.params.items()}
    with pytest.raises(RuntimeError, match="out of memory"):
        method.step(batch)
    assert method.history == []
    for name, p in method.params.items():
        torch.testing.assert_close(p, start[name], rtol=0, atol=1e-12)  # fp64: round-off of ±εz only
