import numpy as np
import pytest
import torch

from pocketlearn.federated.clients import InMemoryClients
from pocketlearn.federated.simulate import InProcessEngine, LocalTraining
from pocketlearn.federated.vectorized import batch_positions, batched_matmul_forward, to_grouped, vmap_forward
from pocketlearn.models import build_model, cnn, mlp


def _clients(n_samples: int, sizes: list[int]) -> list[np.ndarray]:
    perm = np.random.default_rng(0).permutation(n_samples)
    cuts = np.cumsum(sizes)[:-1]
    return [np.sort(p) for p in np.split(perm[: sum(sizes)], cuts)]


def _both_engines(model, x, y, indices, local, ids=None):
    ids = ids or list(range(len(indices)))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    vec = InProcessEngine(model, InMemoryClients(x, y, indices), vectorize=True).train(params, ids, 1, local)
    seq = InProcessEngine(model, InMemoryClients(x, y, indices), vectorize=False).train(params, ids, 1, local)
    return vec, seq


@pytest.mark.parametrize("local", [
    LocalTraining(lr=0.1, batch_size=4, epochs=2),
    LocalTraining(lr=0.05, batch_size=3, momentum=0.9, weight_decay=1e-3),
    LocalTraining(lr=0.05, batch_size=5, proximal_mu=0.5),
    LocalTraining(lr=0.01, batch_size=3, weight_decay=0.05, options=(("optimizer", "adamw"),)),
    LocalTraining(lr=0.01, batch_size=4, epochs=2, proximal_mu=0.3, options=(("optimizer", "adamw"),)),
], ids=["plain", "momentum+decay", "fedprox", "adamw", "adamw+fedprox"])
def test_clients_trained_together_match_clients_trained_one_by_one(local):
    torch.manual_seed(0)
    x, y = torch.randn(60, 8), torch.randint(0, 3, (60,))
    indices = _clients(60, [1, 7, 12, 3, 9])  # uneven: padding and idle steps
    assert local.vectorizable
    vec, seq = _both_engines(mlp(8, (16,), 3), x, y, indices, local)
    assert vec.updates.num_samples.tolist() == [1, 7, 12, 3, 9]
    for name, d in seq.updates.deltas.items():
        torch.testing.assert_close(vec.updates.deltas[name], d, rtol=1e-4, atol=1e-6)
        assert d.abs().sum() > 0
    torch.testing.assert_close(vec.train_loss, seq.train_loss, rtol=1e-4, atol=1e-6)


def test_the_written_out_mlp_matches_one_by_one_round_after_round_and_an_empty_client_changes_nothing():
    """One-step clients' deltas come from the shared start, the others' from their own weights, in reused buffers."""
    torch.manual_seed(0)
    x, y = torch.randn(60, 8), torch.randint(0, 3, (60,))
    indices = [*_clients(60, [1, 7, 12, 3, 9]), np.array([], dtype=np.int64)]
    model, local = mlp(8, (16,), 3), LocalTraining(lr=0.1, batch_size=4)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    together = InProcessEngine(model, InMemoryClients(x, y, indices), vectorize=True)
    one_by_one = InProcessEngine(model, InMemoryClients(x, y, indices), vectorize=False)
    assert together.written_out(local)
    for rnd, ids in [(1, [0, 1, 2, 3, 4]), (2, [5, 3, 2])]:
        vec = together.train(params, ids, rnd, local)
        seq = one_by_one.train(params, [c for c in ids if c != 5], rnd, local)
        rows = [k for k, c in enumerate(ids) if c != 5]
        for name, d in seq.updates.deltas.items():
            torch.testing.assert_close(vec.updates.deltas[name][rows], d, rtol=1e-4, atol=1e-6)
            assert d.abs().sum() > 0
    assert all(not d[0].any() for d in vec.updates.deltas.values())  # client 5 has no sample


def test_a_cnn_trains_together_through_grouped_convolutions():
    torch.manual_seed(0)
    model = cnn(1, 4, widths=(3, 4), image_size=8)
    assert batched_matmul_forward(model) is not None
    x, y = torch.randn(30, 1, 8, 8), torch.randint(0, 4, (30,))
    vec, seq = _both_engines(model, x, y, _clients(30, [5, 10, 2]), LocalTraining(lr=0.05, batch_size=4))
    for name, d in seq.updates.deltas.items():
        torch.testing.assert_close(vec.updates.deltas[name], d, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("clients", [1, 3])
def test_grey_images_of_one_client_stay_channels_last_through_the_convolutions(clients):
    # One channel's strides fit both layouts; the convolution then chose the default one, and max pooling ran
    # 10x slower on it: a round's last, largest client trained 1.7x slower than two clients together.
    x = to_grouped(torch.randn(clients, 8, 1, 28, 28))
    out = torch.nn.functional.conv2d(x, torch.randn(clients * 16, 1, 3, 3), padding=1, groups=clients)
    assert out.stride(1) == 1  # channels last: each pixel's channels side by side


def test_other_models_train_together_through_vmap():
    torch.manual_seed(0)
    model = build_model("tiny-gpt")
    assert batched_matmul_forward(model) is None and vmap_forward(model) is not None
    x = torch.randint(0, 256, (12, 9))
    y = torch.roll(x, -1, 1)
    vec, seq = _both_engines(model, x, y, _clients(12, [2, 5, 3]), LocalTraining(lr=0.01, batch_size=2))
    for name, d in seq.updates.deltas.items():
        torch.testing.assert_close(vec.updates.deltas[name], d, rtol=1e-3, atol=1e-5)


def test_batch_norm_falls_back_to_one_client_at_a_time():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    clients = InMemoryClients(torch.randn(10, 4), torch.randint(0, 2, (10,)), _clients(10, [5, 5]))
    engine = InProcessEngine(model, clients)
    assert engine.forward is None
    result = engine.train({n: p.detach() for n, p in model.named_parameters()}, [0, 1], 1, LocalTraining())
    assert len(result.updates) == 2


def test_batches_never_span_epochs_and_padding_weighs_nothing():
    orders = [np.array([[5, 6, 7], [7, 5, 6]]), np.array([[1]] * 2)]
    index, weight, steps = batch_positions(orders, batch_size=2)
    assert steps.tolist() == [4, 2]
    assert index[0, :4].tolist() == [[5, 6], [7, 0], [7, 5], [6, 0]]
    np.testing.assert_allclose(weight[0, :4], [[0.5, 0.5], [1, 0], [0.5, 0.5], [1, 0]])
    assert weight[1, 2:].sum() == 0  # the small client idles once its two epochs are done


def test_a_dense_payloads_size_is_its_encodings_length():
    from pocketlearn.federated.codecs import decode_dense, dense_size, encode_dense

    for tensors in ({"w": torch.randn(4, 2), "b": torch.randn(4)}, dict(mlp(64, (128,), 10).state_dict())):
        payload = encode_dense(tensors)
        assert dense_size({n: tuple(t.shape) for n, t in tensors.items()}) == len(payload)
        assert all(torch.equal(decode_dense(payload)[n], t) for n, t in tensors.items())  # lossless


def test_the_warm_up_trains_one_batch_per_client_not_a_round():
    x, y = torch.randn(60, 8), torch.randint(0, 3, (60,))
    engine = InProcessEngine(mlp(8, (16,), 3), InMemoryClients(x, y, _clients(60, [20, 30, 10])))
    seen = []
    train = engine._train_vectorized
    engine._train_vectorized = lambda params, ids, cohort, orders, local: seen.append(orders) or train(
        params, ids, cohort, orders, local)
    engine.warm_up(3, LocalTraining(batch_size=4, epochs=2))
    assert [o.shape for o in seen[0]] == [(1, 4)] * 3  # 12 samples, not the round's 2 x 60
    assert all(o.shape == (1, 4) for orders in seen for o in orders)  # the timed steps too


def test_only_clients_with_a_batch_left_run_the_model():
    from pocketlearn.federated.vectorized import LocalOptimizer, pad_batches, stacked_forwards, train_stacked

    model = mlp(4, (8,), 2)
    x, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    forward = stacked_forwards(model)["batched matmul/conv"]
    rows = []
    data = pad_batches(x, y, [np.arange(8)[None], np.arange(8, 10)[None]], 2)  # 4 steps and 1 step
    params = {n: p.detach() for n, p in model.named_parameters()}
    train_stacked(lambda p, xs: rows.append(len(xs)) or forward(p, xs), params, data, LocalOptimizer(0.1, 0.9))
    assert rows == [2, 1, 1, 1]


def test_clients_must_come_largest_first():
    from pocketlearn.federated.vectorized import largest_first, pad_batches

    orders = [np.arange(2)[None], np.arange(2, 10)[None], np.arange(10, 14)[None]]
    with pytest.raises(ValueError, match="largest first"):
        pad_batches(torch.randn(14, 4), torch.zeros(14, dtype=torch.long), orders, 2)
    assert largest_first(np.array([o.shape[1] for o in orders])).tolist() == [1, 2, 0]


def test_a_skewed_round_computes_only_its_real_client_steps():
    """Sizes from 1 to 40 samples: a padded stack would run 5 x 10 client-steps for 16 real ones."""
    x, y = torch.randn(80, 8), torch.randint(0, 3, (80,))
    engine = InProcessEngine(mlp(8, (16,), 3), InMemoryClients(x, y, _clients(80, [1, 40, 3, 5, 2])))
    seen = []
    forward = engine.forwards["batched matmul/conv"]
    engine.forwards["batched matmul/conv"] = lambda p, xs: seen.append(len(xs)) or forward(p, xs)
    params = {n: p.detach().clone() for n, p in engine.template.named_parameters()}
    engine.train(params, [0, 1, 2, 3, 4], 1, LocalTraining(lr=0.1, batch_size=4, momentum=0.5))
    assert sum(seen) == 1 + 10 + 1 + 2 + 1  # each client's ceil(n / 4) steps, nothing for finished clients
    assert engine.client_steps == (15, 15) and engine.samples_trained == 1 + 40 + 3 + 5 + 2


def _small_cnn() -> torch.nn.Sequential:
    """Two convolutions, 20k parameters, ~2 MFLOP per 28x28 image: far more work than its parameter count says."""
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 7 * 7, 10))


def test_a_steps_work_is_counted_per_pixel_as_torch_counts_it():
    from torch.utils.flop_counter import FlopCounterMode

    from pocketlearn.federated.population import train_flops_per_sample

    model, x = _small_cnn(), torch.randn(1, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    assert train_flops_per_sample(model, x) == pytest.approx(counter.get_total_flops(), rel=0.05)
    assert train_flops_per_sample(model, x) > 40 * sum(p.numel() for p in model.parameters())


def test_a_convolution_step_uses_every_core_and_a_tiny_mlp_step_one():
    x = torch.randn(64, 1, 28, 28)
    conv = InProcessEngine(_small_cnn(), InMemoryClients(x, torch.zeros(64, dtype=torch.long), _clients(64, [32, 32])))
    assert conv.threads_for(clients=10, batch_size=32) is None
    digits = InProcessEngine(mlp(64, (128,), 10), InMemoryClients(torch.randn(64, 64),
                                                                  torch.zeros(64, dtype=torch.long),
                                                                  _clients(64, [32, 32])))
    assert digits.threads_for(clients=10, batch_size=16) == 1


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_bf16_clients_train_alike_together_and_one_by_one_and_differ_from_fp32(model):
    torch.manual_seed(0)
    if model == "cnn":
        net, x = cnn(1, 4, widths=(3, 4), image_size=8), torch.randn(30, 1, 8, 8)
    else:
        net, x = mlp(8, (16,), 4), torch.randn(30, 8)
    y = torch.randint(0, 4, (30,))
    indices = _clients(30, [5, 10, 2])
    bf16 = LocalTraining(lr=0.05, batch_size=4, momentum=0.5, precision="bf16")
    vec, seq = _both_engines(net, x, y, indices, bf16)
    fp32, _ = _both_engines(net, x, y, indices, LocalTraining(lr=0.05, batch_size=4, momentum=0.5))
    for name, d in seq.updates.deltas.items():
        assert vec.updates.deltas[name].dtype == torch.float32  # fp32 master weights and updates
        torch.testing.assert_close(vec.updates.deltas[name], d, rtol=0.05, atol=2e-3)
        assert not torch.equal(vec.updates.deltas[name], fp32.updates.deltas[name])  # autocast did run
        torch.testing.assert_close(vec.updates.deltas[name], fp32.updates.deltas[name], rtol=0.1, atol=5e-3)


def test_bf16_needs_a_method_that_backpropagates():
    from pocketlearn.errors import ConfigError

    with pytest.raises(ConfigError, match="precision"):
        LocalTraining(method="mezo", precision="bf16").method_options()
    assert LocalTraining(method="bias", precision="bf16").method_options()["precision"] == "bf16"
    assert "precision" not in LocalTraining(method="bias").method_options()  # fp32 runs keep their fingerprints


def test_a_language_models_ignored_targets_weigh_as_in_the_per_client_loop():
    """Targets of -100 (padding) count nothing, and each batch's loss is the mean over its counted tokens."""
    torch.manual_seed(0)
    model = build_model("tiny-gpt")
    x = torch.randint(0, 256, (12, 9))
    y = torch.roll(x, -1, 1)
    y[::2, 5:] = -100  # half the windows end early, by different amounts per batch
    y[3, 2:] = -100
    vec, seq = _both_engines(model, x, y, _clients(12, [2, 5, 3]), LocalTraining(lr=0.05, batch_size=2))
    for name, d in seq.updates.deltas.items():
        torch.testing.assert_close(vec.updates.deltas[name], d, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(vec.train_loss, seq.train_loss, rtol=1e-4, atol=1e-5)


def test_a_wide_vocabularys_fused_loss_has_cross_entropys_values_and_gradients():
    from pocketlearn.federated.vectorized import WIDE_VOCABULARY, per_sample_loss

    torch.manual_seed(0)
    out = torch.randn(2, 3, 5, WIDE_VOCABULARY, requires_grad=True)
    y = torch.randint(0, WIDE_VOCABULARY, (2, 3, 5))
    y[0, 1, 2], y[1, 2] = -100, -100  # one ignored position, one sample with none counted
    w = torch.rand(2, 3)
    fused = (per_sample_loss(out, y) * w).sum()
    ce = torch.nn.functional.cross_entropy(out.reshape(-1, WIDE_VOCABULARY), y.reshape(-1), reduction="none")
    reference = (ce.reshape(2, 3, 5).sum(2) * w).sum()
    torch.testing.assert_close(fused, reference)
    torch.testing.assert_close(torch.autograd.grad(fused, out, retain_graph=True)[0],
                               torch.autograd.grad(reference, out)[0])
    with pytest.raises(RuntimeError, match="once"):
        torch.autograd.grad(fused, out)
