import io
import math

import pytest
import torch

from pocketlearn.errors import ConfigError
from pocketlearn.federated.strategies import (
    CoordinateMedian,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedProx,
    FedYogi,
    Krum,
    MultiKrum,
    NormBounding,
    TrimmedMean,
    available_strategies,
    make_strategy,
)
from pocketlearn.federated.strategies.aggregate import coordinate_median, trimmed_mean
from pocketlearn.federated.strategies.krum import krum_scores, pairwise_sq_distances
from pocketlearn.federated.updates import ClientUpdate, RoundUpdates

F64 = torch.float64


def rounds_of(deltas: dict[str, list], samples: list[float], trained: dict[str, list[bool]] | None = None):
    """RoundUpdates from per-parameter lists of client rows (float64, for exact hand comparisons)."""
    return RoundUpdates(list(range(len(samples))), torch.tensor(samples),
                        {n: torch.tensor(rows, dtype=F64) for n, rows in deltas.items()},
                        {n: torch.tensor(m) for n, m in (trained or {}).items()})


def zeros(**shapes):
    return {n: torch.zeros(s, dtype=F64) for n, s in shapes.items()}


# --- FedAvg / FedProx ------------------------------------------------------------------------------------
W = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]


def test_fedavg_is_the_sample_weighted_mean():
    params = zeros(w=2)
    FedAvg().apply(params, rounds_of({"w": W}, [1, 2, 3]))
    assert torch.allclose(params["w"], torch.tensor([22 / 6, 28 / 6], dtype=F64))


def test_fedavg_uniform_and_server_lr():
    params = {"w": torch.ones(2, dtype=F64)}
    FedAvg(weighting="uniform", server_lr=0.5).apply(params, rounds_of({"w": W}, [1, 2, 3]))
    assert torch.allclose(params["w"], torch.tensor([1 + 1.5, 1 + 2.0], dtype=F64))


def test_masked_parameter_is_averaged_over_the_clients_that_trained_it():
    ups = [ClientUpdate(0, 1, {"w": torch.tensor([1.0]), "b": torch.tensor([1.0])}),
           ClientUpdate(1, 2, {"w": torch.tensor([3.0]), "b": torch.tensor([3.0])}),
           ClientUpdate(2, 3, {"w": torch.tensor([5.0])})]  # a bias-less client: trained only w
    updates = RoundUpdates.stack(ups)
    params = {"w": torch.zeros(1), "b": torch.zeros(1)}
    FedAvg().apply(params, updates)
    assert params["w"].item() == pytest.approx(22 / 6)
    assert params["b"].item() == pytest.approx(7 / 3)  # (1·1 + 2·3) / 3, client 2's zero row left out
    params = {"w": torch.zeros(1), "b": torch.zeros(1)}
    FedAvg(weighting="uniform").apply(params, updates)
    assert params["b"].item() == pytest.approx(2.0)


@pytest.mark.parametrize("strategy", [FedAvg(), FedAdam(), CoordinateMedian(), TrimmedMean(),
                                      NormBounding(1.0), Krum(byzantine=0), MultiKrum(byzantine=0)],
                         ids=lambda s: s.name)
def test_a_parameter_nobody_trained_keeps_its_value(strategy):
    params = {"w": torch.ones(2, dtype=F64), "b": torch.ones(1, dtype=F64)}
    strategy.apply(params, rounds_of({"w": W, "b": [[9.0], [9.0], [9.0]]}, [1, 2, 3],
                                     {"b": [False, False, False]}))
    assert params["b"].item() == 1.0 and not torch.equal(params["w"], torch.ones(2, dtype=F64))


def test_strategies_update_nn_parameters_in_place():
    layer = torch.nn.Linear(2, 1)
    params = dict(layer.named_parameters())
    before = layer.weight.detach().clone()
    update = ClientUpdate(0, 4, {n: torch.ones_like(p) for n, p in params.items()})
    FedAdam().apply(params, RoundUpdates.stack([update]))
    assert torch.all(layer.weight > before) and layer.weight.requires_grad


def test_fedprox_exposes_mu_and_aggregates_like_fedavg():
    assert FedAvg().proximal_mu == 0.0
    prox = FedProx(mu=0.3)
    assert prox.proximal_mu == 0.3 and make_strategy("fedprox", mu=0.05).proximal_mu == 0.05
    a, b = zeros(w=2), zeros(w=2)
    prox.apply(a, rounds_of({"w": W}, [1, 2, 3]))
    FedAvg().apply(b, rounds_of({"w": W}, [1, 2, 3]))
    assert torch.equal(a["w"], b["w"])
    with pytest.raises(ConfigError, match="mu should be a number >= 0, got -0.1"):
        FedProx(mu=-0.1)


# --- adaptive server optimizers --------------------------------------------------------------------------
def hand_step(delta, m, v, rule, lr=1e-2, b1=0.9, b2=0.99, tau=1e-3):
    """One step of Reddi et al.'s Algorithm 2 on one coordinate, with floats: returns (step, m, v)."""
    m = b1 * m + (1 - b1) * delta
    if rule == "adam":
        v = b2 * v + (1 - b2) * delta**2
    elif rule == "yogi":
        v = v - (1 - b2) * delta**2 * math.copysign(1.0, v - delta**2)
    else:
        v = v + delta**2
    return lr * m / (math.sqrt(v) + tau), m, v


@pytest.mark.parametrize(("cls", "rule"), [(FedAdam, "adam"), (FedYogi, "yogi"), (FedAdagrad, "adagrad")])
def test_adaptive_optimizers_match_two_hand_computed_steps(cls, rule):
    strategy, params = cls(), zeros(w=2)
    deltas = [[[0.5, -2.0]], [[0.01, 0.0]]]  # one client; a loud round, then a quiet one
    expected, ms, vs = [0.0, 0.0], [0.0, 0.0], [1e-6, 1e-6]  # m0 = 0, v0 = tau²
    for rows in deltas:
        strategy.apply(params, rounds_of({"w": rows}, [5]))
        for i in range(2):
            step, ms[i], vs[i] = hand_step(rows[0][i], ms[i], vs[i], rule)
            expected[i] += step
        assert params["w"].tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_adaptive_optimizers_differ_where_they_should():
    loud, quiet = rounds_of({"w": [[0.5]]}, [1]), rounds_of({"w": [[0.01]]}, [1])
    first, second = {}, {}
    for cls in (FedAdam, FedYogi, FedAdagrad):
        s, p = cls(), zeros(w=1)
        s.apply(p, loud)
        first[cls.name] = p["w"].item()
        s.apply(p, quiet)
        second[cls.name] = p["w"].item() - first[cls.name]
    # step 1: Adam and Yogi both grow v by (1-β2)Δ² (≈ a signSGD step of lr), Adagrad by Δ² (10x smaller step)
    assert first["fedadam"] == pytest.approx(first["fedyogi"], rel=1e-4)
    assert first["fedadagrad"] == pytest.approx(first["fedadam"] / 10, rel=3e-2)  # up to tau
    # step 2 (a quiet round): Adam's v decays by β2, Yogi's only by (1-β2)Δ², so Yogi steps less
    assert second["fedyogi"] < second["fedadam"] and second["fedyogi"] != pytest.approx(second["fedadam"], rel=1e-6)


def random_rounds(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        mask = torch.rand(4, generator=g) < 0.7
        mask[0] = True
        deltas = {"w": torch.randn(4, 3, 2, generator=g), "b": torch.randn(4, 3, generator=g) * mask[:, None]}
        out.append(RoundUpdates([0, 1, 2, 3], torch.randint(1, 50, (4,), generator=g).float(), deltas, {"b": mask}))
    return out


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad", "norm-bounding"])
def test_state_dict_round_trip_continues_identically(name):
    options = {"max_norm": 1.0, "inner": "fedyogi"} if name == "norm-bounding" else {"weighting": "uniform"}
    init = {"w": torch.randn(3, 2), "b": torch.randn(3)}

    whole = make_strategy(name, **options)
    p_whole = {n: t.clone() for n, t in init.items()}
    for r in random_rounds(3):
        whole.apply(p_whole, r)

    first = make_strategy(name, **options)
    p_resumed = {n: t.clone() for n, t in init.items()}
    rounds = random_rounds(3)
    first.apply(p_resumed, rounds[0])
    saved = first.state_dict()
    first.apply({n: t.clone() for n, t in p_resumed.items()}, rounds[1])  # must not leak into the saved state
    buffer = io.BytesIO()
    torch.save(saved, buffer)  # as the server's checkpoint does
    buffer.seek(0)
    resumed = make_strategy(name, **options)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for r in rounds[1:]:
        resumed.apply(p_resumed, r)
    for n in init:
        assert torch.equal(p_whole[n], p_resumed[n])


# --- robust aggregation ----------------------------------------------------------------------------------
def poisoned_round(k=10, outlier=1e6):
    g = torch.Generator().manual_seed(1)
    honest = 1.0 + 0.1 * torch.randn(k, 5, generator=g)
    return RoundUpdates(list(range(k + 1)), torch.full((k + 1,), 10.0),
                        {"w": torch.cat([honest, torch.full((1, 5), outlier)])})


@pytest.mark.parametrize("strategy", [CoordinateMedian(), TrimmedMean(trim_fraction=0.1)], ids=lambda s: s.name)
def test_robust_aggregators_resist_one_huge_outlier(strategy):
    robust, plain = {"w": torch.zeros(5)}, {"w": torch.zeros(5)}
    strategy.apply(robust, poisoned_round())
    FedAvg().apply(plain, poisoned_round())
    assert torch.all((robust["w"] - 1).abs() < 0.2)
    assert torch.all(plain["w"] > 1e4)


def test_median_and_trimmed_mean_by_hand():
    rows = {"w": [[1.0], [2.0], [3.0], [10.0]]}
    p = zeros(w=1)
    CoordinateMedian().apply(p, rounds_of(rows, [1, 1, 1, 1]))
    assert p["w"].item() == 2.5  # even count: the mean of the two middle values
    p = zeros(w=1)
    CoordinateMedian().apply(p, rounds_of(rows, [1, 1, 1, 1], {"w": [True, True, False, True]}))
    assert p["w"].item() == 2.0  # over the three clients that trained it
    p = zeros(w=1)
    TrimmedMean(trim_fraction=0.2).apply(p, rounds_of({"w": [[1.0], [2.0], [3.0], [4.0], [100.0]]}, [1] * 5))
    assert p["w"].item() == 3.0  # ⌊0.2·5⌋ = 1 dropped at each end: mean(2, 3, 4)
    p = zeros(w=1)
    TrimmedMean(trim_fraction=0.29).apply(p, rounds_of({"w": [[float(i)] for i in range(100)]}, [1] * 100))
    assert p["w"].item() == pytest.approx(sum(range(29, 71)) / 42)  # ⌊0.29·100⌋ = 29, not 28


@pytest.mark.parametrize("n", range(1, 13))
def test_median_and_trimmed_mean_match_a_sort_reference_with_ties(n):
    g = torch.Generator().manual_seed(n)
    rows = torch.randint(-3, 4, (n, 6, 7), generator=g).double()  # few distinct values: many ties
    ordered = rows.sort(dim=0).values
    assert torch.allclose(coordinate_median(rows), (ordered[(n - 1) // 2] + ordered[n // 2]) / 2)
    for fraction in (0.0, 0.1, 0.25, 0.49):
        t = int(fraction * n)
        assert torch.allclose(trimmed_mean(rows, fraction), ordered[t:n - t].mean(dim=0)), fraction


def test_trimmed_mean_that_would_leave_nothing_is_a_config_error():
    for bad in (0.5, 0.7, -0.1):
        with pytest.raises(ConfigError, match="trim_fraction should be a number in \\[0, 0.5\\)"):
            TrimmedMean(trim_fraction=bad)


def test_norm_bounding_caps_each_clients_whole_update():
    updates = rounds_of({"a": [[3.0], [0.3], [0.0]], "b": [[0.0, 4.0], [0.4, 0.0], [0.0, 0.0]]}, [1, 1, 2])
    params = zeros(a=1, b=2)
    NormBounding(1.0).apply(params, updates)
    assert updates.client_norms().tolist() == pytest.approx([1.0, 0.5, 0.0])  # 5 -> 1; 0.5 and 0 untouched
    assert torch.allclose(params["a"], torch.tensor([(0.6 + 0.3) / 4], dtype=F64))
    assert torch.allclose(params["b"], torch.tensor([0.4 / 4, 0.8 / 4], dtype=F64))
    assert make_strategy("norm-bounding", max_norm=1.0, inner="fedprox", mu=0.2).proximal_mu == 0.2


# Krum: 4 honest clients near (1, 1), one attacker far away; f = 1, n = 5 > 2f + 2 = 4
KRUM_ROWS = [[1.0, 1.0], [1.2, 1.0], [0.8, 1.0], [1.0, 1.4], [-9.0, 5.0]]


def test_krum_scores_by_hand_and_picks_the_honest_update():
    updates = rounds_of({"w": [r[:1] for r in KRUM_ROWS], "b": [r[1:] for r in KRUM_ROWS]}, [1, 1, 1, 1, 100])
    d = pairwise_sq_distances(updates)
    assert d[0].tolist() == pytest.approx([0.0, 0.04, 0.04, 0.16, 116.0])  # split over two parameters
    # n - f - 2 = 2 nearest others: client 0: 0.04 + 0.04; client 1: 0.04 + 0.16 (to 0 and 2); ...
    assert krum_scores(d, 1).tolist() == pytest.approx([0.08, 0.2, 0.2, 0.36, 112.04 + 112.96])
    params = zeros(w=1, b=1)
    Krum(byzantine=1).apply(params, updates)
    assert params["w"].item() == 1.0 and params["b"].item() == 1.0  # client 0's update, sample counts ignored
    plain = zeros(w=1, b=1)
    FedAvg().apply(plain, updates)
    assert plain["w"].item() < -8  # the attacker's 100 claimed samples drag the mean


def test_multi_krum_averages_the_best_scored_updates():
    params = zeros(w=2)
    MultiKrum(byzantine=1, select=3).apply(params, rounds_of({"w": KRUM_ROWS}, [1] * 5))
    assert params["w"].tolist() == pytest.approx([1.0, 1.0])  # mean of clients 0, 1, 2 (ties: earlier first)
    params = zeros(w=2)
    MultiKrum(byzantine=1).apply(params, rounds_of({"w": KRUM_ROWS}, [1] * 5))  # m = n - f = 4: all honest ones
    assert params["w"].tolist() == pytest.approx([1.0, 1.1])
    params = zeros(w=2)
    MultiKrum(byzantine=1, select=5).apply(params, rounds_of({"w": KRUM_ROWS}, [1] * 5))  # m = n: the mean
    assert params["w"].tolist() == pytest.approx([-1.0, 1.88])


def test_multi_krum_averages_a_partly_trained_parameter_over_the_chosen_clients_that_trained_it():
    params = zeros(w=2, b=1)
    MultiKrum(byzantine=1, select=3).apply(params, rounds_of(
        {"w": KRUM_ROWS, "b": [[0.1], [0.0], [0.3], [0.0], [0.0]]}, [1] * 5, {"b": [True, False, True, True, True]}))
    assert params["b"].item() == pytest.approx(0.2)  # clients 0 and 2 of the chosen 0, 1, 2 trained b


@pytest.mark.parametrize(("strategy", "n", "message"), [
    (Krum(byzantine=1), 4, r"krum needs n > 2f \+ 2 clients per round to tolerate f = 1; this round gives n = 4: "
                           r"lower byzantine to 0 or use at least 5 clients"),
    (MultiKrum(byzantine=2, select=3), 6, r"multi-krum needs n > 2f \+ 2 .* f = 2; this round gives n = 6"),
    (MultiKrum(byzantine=1, select=6), 5, r"select = 6 averages more updates than the n = 5 clients"),
])
def test_krum_refuses_a_round_too_small_for_its_f(strategy, n, message):
    with pytest.raises(ConfigError, match=message):
        strategy.apply(zeros(w=2), rounds_of({"w": [[0.0, 0.0]] * n}, [1] * n))


def test_krum_options_are_checked_and_a_config_too_small_never_starts():
    with pytest.raises(ConfigError, match=r"byzantine should be a whole number >= 0 .* got -1; select should be a "
                                          r"whole number >= 1 .* got 0"):
        make_strategy("multi-krum", byzantine=-1, select=0)
    with pytest.raises(ConfigError, match=r"krum has no option 'select'; options are \['byzantine'\]"):
        make_strategy("krum", select=2)
    from pocketlearn.federated.config import parse_config

    raw = {"clients_per_round": 6, "data": {"name": "digits", "num_clients": 10},
           "strategy": {"name": "krum", "options": {"byzantine": 2}}}
    with pytest.raises(ConfigError, match=r"clients_per_round gives n = 6: lower byzantine to 1 or use at least 7"):
        parse_config(raw)  # refused as the config is read
    with pytest.raises(ConfigError, match="secagg with strategy 'multi-krum': the strategy needs each client's"):
        parse_config({**raw, "strategy": {"name": "multi-krum"}, "secagg": {"enabled": True}})


# --- registry --------------------------------------------------------------------------------------------
def test_every_registered_strategy_builds_from_plain_options():
    assert set(available_strategies()) == {"fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "median",
                                           "trimmed-mean", "norm-bounding", "krum", "multi-krum", "dp-fedavg"}
    needs = {"norm-bounding": {"max_norm": 2}, "dp-fedavg": {"expected_clients": 10, "num_clients": 100}}
    for name in available_strategies():
        s = make_strategy(name, **needs.get(name, {}))
        assert s.name == name
    adam = make_strategy("fedadam", lr=0.1, betas=[0.8, 0.9], tau=1e-2, weighting="uniform")  # a TOML array
    assert adam.betas == (0.8, 0.9)
    nb = make_strategy("norm-bounding", max_norm=1, inner="trimmed-mean", trim_fraction=0.2)
    assert nb.inner == TrimmedMean(trim_fraction=0.2)


@pytest.mark.parametrize(("name", "options", "message"), [
    ("fedsgd", {}, r"unknown strategy 'fedsgd'; choose one of \['fedavg', 'fedprox'"),
    ("fedavg", {"lr": 0.1}, r"fedavg has no option 'lr'; options are \['server_lr', 'weighting'\]"),
    ("fedavg", {"weighting": "clients"}, r"weighting should be one of \['samples', 'uniform'\], got 'clients'"),
    ("fedadam", {"lr": 0, "betas": [0.9], "tau": "small"},
     r"lr should be a number > 0, got 0; tau should be .*got 'small'; betas should be two numbers"),
    ("fedyogi", {"betas": (0.9, 1.0)}, r"betas\[1\] should be a number in \[0, 1\), got 1.0"),
    ("norm-bounding", {}, r"norm-bounding needs max_norm"),
    ("norm-bounding", {"max_norm": -1}, r"max_norm should be a number > 0, got -1"),
    ("norm-bounding", {"max_norm": 1, "mu": 0.1}, r"\(inner fedavg\) has no option 'mu'; options are \['inner', "),
    ("norm-bounding", {"max_norm": 1, "inner": "norm-bounding"}, r"unknown inner strategy 'norm-bounding'"),
])
def test_registry_errors_name_the_problem_and_the_choices(name, options, message):
    with pytest.raises(ConfigError, match=message):
        make_strategy(name, **options)


# --- end to end ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "options", "rounds"), [
    ("fedavg", {}, 20), ("fedprox", {"mu": 0.1}, 20), ("median", {}, 20), ("trimmed-mean", {}, 20),
    ("krum", {"byzantine": 2}, 20), ("multi-krum", {"byzantine": 2}, 20),
    ("fedyogi", {"lr": 0.1}, 60),  # no bias correction, sign-like steps: slower on this easy problem
])
def test_rounds_over_least_squares_clients_converge(name, options, rounds):
    """20 clients, each with its own (x, y = x·w* + noise); 5 local gradient steps per round (vectorised)."""
    g = torch.Generator().manual_seed(0)
    k, n, d = 20, 32, 5
    w_true = torch.randn(d, generator=g)
    x = torch.randn(k, n, d, generator=g)
    y = x @ w_true + 0.01 * torch.randn(k, n, generator=g)
    strategy, params = make_strategy(name, **options), {"w": torch.zeros(d)}
    for _ in range(rounds):
        w = params["w"].expand(k, d).clone()  # (K, d)
        for _ in range(5):
            residual = torch.einsum("knd,kd->kn", x, w) - y  # (K, n)
            grad = torch.einsum("knd,kn->kd", x, residual) / n
            grad += strategy.proximal_mu * (w - params["w"])
            w -= 0.1 * grad
        strategy.apply(params, RoundUpdates(list(range(k)), torch.full((k,), float(n)), {"w": w - params["w"]}))
    assert (params["w"] - w_true).norm() < 0.05 * w_true.norm()
