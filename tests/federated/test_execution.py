import numpy as np
import pytest
import torch

from pocketlearn.federated.clients import InMemoryClients
from pocketlearn.federated.execution import Execution, choose, group_sizes
from pocketlearn.federated.simulate import InProcessEngine, LocalTraining
from pocketlearn.models import mlp


def test_group_sizes_are_powers_of_two_up_to_the_cohort():
    assert group_sizes(10) == [1, 2, 4, 8, 10]
    assert group_sizes(8) == [1, 2, 4, 8]
    assert group_sizes(1) == [1]


def test_the_forward_and_group_size_that_train_the_cohort_fastest_are_chosen():
    costs = {("batched", 10): 4.0, ("batched", 8): 3.0, ("batched", 4): 3.5, ("batched", 2): 3.48,
             ("batched", 1): 6.0, **{("vmap", g): 5.0 for g in (10, 8, 4, 2, 1)}}
    asked = []
    chosen = choose(["vmap", "batched"], 10, lambda f, g: asked.append((f, g)) or costs[(f, g)])
    # groups of 8 leave a group of 2: 8 x 3.0 + 2 x 3.48 = 31 against 34.8 for groups of 2 and 40 for all 10
    assert (chosen.forward, chosen.group_size) == ("batched", 8)
    assert len(asked) == len(set(asked)) == len(costs) and chosen.timings == costs
    slow = {**costs, **{("vmap", g): 7.0 for g in (10, 8, 4, 2, 1)}}  # 1.75x the fastest: no smaller groups
    assert choose(["vmap", "batched"], 10, lambda f, g: slow[(f, g)]).timings.keys() == costs.keys() - {
        ("vmap", g) for g in (8, 4, 2, 1)}
    assert "8 clients per group (timed at setup: 3e+03 ms" in chosen.describe()
    near_tie = choose(["batched"], 4, lambda f, g: {4: 1.0, 2: 0.99, 1: 2.0}[g])
    assert near_tie.group_size == 4  # 1% faster is within the margin: fewer, larger groups


def _clients(sizes: list[int]) -> list[np.ndarray]:
    return np.split(np.arange(sum(sizes)), np.cumsum(sizes)[:-1])


def test_groups_of_any_size_train_the_same_weights():
    torch.manual_seed(0)
    x, y = torch.randn(70, 8), torch.randint(0, 3, (70,))
    indices, ids = _clients([20, 3, 9, 1, 12, 25]), [0, 1, 2, 3, 4, 5]
    local = LocalTraining(lr=0.1, batch_size=4, momentum=0.5)
    params = {n: p.detach().clone() for n, p in mlp(8, (16,), 3).named_parameters()}
    clients = InMemoryClients(x, y, indices)
    results = [InProcessEngine(mlp(8, (16,), 3), clients, group_size=g).train(params, ids, 1, local)
               for g in (6, 4, 2, 1)]
    for r in results[1:]:
        for n, d in results[0].updates.deltas.items():
            torch.testing.assert_close(r.updates.deltas[n], d, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r.train_loss, results[0].train_loss)


@pytest.mark.parametrize("method_options", [(), (("optimizer", "adamw"),)], ids=["written-out MLP", "stacked"])
def test_the_warm_up_times_group_sizes_and_keeps_the_fastest(method_options):
    x, y = torch.randn(80, 8), torch.randint(0, 3, (80,))
    engine = InProcessEngine(mlp(8, (16,), 3), InMemoryClients(x, y, _clients([10] * 8)))
    engine.warm_up(8, LocalTraining(batch_size=4, options=method_options))
    timings = engine.execution.timings
    assert {g for _, g in timings} == {1, 2, 4, 8}
    assert engine.group_size in {1, 2, 4, 8} and timings[(engine.execution.forward, engine.group_size)] == min(
        s for (f, _), s in timings.items() if f == engine.execution.forward)
    again = InProcessEngine(mlp(8, (16,), 3), InMemoryClients(x, y, _clients([10] * 8)))
    again.warm_up(8, LocalTraining(batch_size=4, options=method_options))
    assert again.execution is engine.execution  # measured once per model shape in a process


def test_a_group_size_asked_for_is_kept():
    x, y = torch.randn(80, 8), torch.randint(0, 3, (80,))
    engine = InProcessEngine(mlp(8, (16,), 3), InMemoryClients(x, y, _clients([10] * 8)), group_size=3)
    engine.warm_up(8, LocalTraining(batch_size=4))
    assert engine.execution == Execution("batched matmul/conv", 3)


def test_a_later_run_on_this_machine_reuses_the_choice_and_a_bad_cache_is_measured_again(tmp_path, monkeypatch):
    import json

    from pocketlearn.federated import execution

    monkeypatch.setenv("POCKETLEARN_CACHE", str(tmp_path))
    monkeypatch.setattr(execution, "_CHOSEN", {})
    made = []

    def make():
        made.append(1)
        return Execution("stacked", 4, {("stacked", 4): 0.001, ("stacked", 8): 0.002})

    first = execution.cached(("a model", 8), make)
    monkeypatch.setattr(execution, "_CHOSEN", {})  # a new process
    later = execution.cached(("a model", 8), make)
    assert len(made) == 1 and later.earlier and not first.earlier
    assert (later.forward, later.group_size, later.timings) == (first.forward, first.group_size, first.timings)
    assert "timed in an earlier run" in later.describe()
    stored = json.loads(execution.cache_file().read_text())
    (name,) = stored
    wrong_schema = json.dumps({name: {**stored[name], "group_size": "four"}})
    for bad in ("{not json", "[1, 2]", wrong_schema, "{" + " " * (2 << 20) + "}"):
        execution.cache_file().write_text(bad)
        monkeypatch.setattr(execution, "_CHOSEN", {})
        assert not execution.cached(("a model", 8), make).earlier  # measured again, and stored
    assert len(made) == 5 and json.loads(execution.cache_file().read_text()) == stored
