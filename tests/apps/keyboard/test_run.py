import pytest

from pocketlearn.apps.keyboard.pretrain import PretrainConfig, pretrain
from pocketlearn.apps.keyboard.run import KeyboardConfig, run_keyboard
from pocketlearn.checkpoint import CheckpointError

TINY = PretrainConfig(limit=128)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """One cache for the module: the tiny pretraining runs once."""
    monkeypatch.setenv("POCKETLEARN_CACHE", str(tmp_path_factory.getbasetemp() / "keyboard-cache"))


def _config(update, **kw):
    return KeyboardConfig(users=8, rounds=2, clients_per_round=4, update=update, epsilon=None, dropout=0.0,
                          eval_every=1, pretraining=TINY, **kw)


def test_pretraining_is_cached(tmp_path):
    first = pretrain(TINY)
    stamp = first.stat().st_mtime_ns
    assert pretrain(TINY) == first and first.stat().st_mtime_ns == stamp  # the cache, not a second run
    assert not first.with_suffix(".partial.pt").exists()


def test_a_cache_of_the_older_checkpoint_format_is_rebuilt(tmp_path, monkeypatch):
    import torch

    from pocketlearn.checkpoint import FORMAT_VERSION, checkpoint_format, load_checkpoint

    monkeypatch.setenv("POCKETLEARN_CACHE", str(tmp_path))
    first = pretrain(TINY)
    torch.save({"format_version": 1, **load_checkpoint(first)}, first)  # as format 1 wrote it: no digest
    assert checkpoint_format(first) == 1
    assert pretrain(TINY) == first and checkpoint_format(first) == FORMAT_VERSION


def test_partial_embedding_updates_send_a_fraction_of_the_full_model(tmp_path):
    partial = run_keyboard(_config("partial"), tmp_path / "partial")
    full = run_keyboard(_config("full"), tmp_path / "full")
    assert partial.bytes_up_per_client < full.bytes_up_per_client / 2
    for result in (partial, full):  # training lowered the held-out loss (two tiny rounds may not move top-1)
        assert result.after["loss"] < result.before["loss"] - 0.1
        assert {"accuracy", "top3", "perplexity"} <= set(result.after)
        assert [r["round"] for r in result.rounds] == [1, 2] and result.epsilon is None


def test_dp_run_reports_epsilon_within_its_target(tmp_path):
    config = KeyboardConfig(users=8, rounds=2, clients_per_round=4, epsilon=4.0, pretraining=TINY)
    result = run_keyboard(config, tmp_path / "dp")
    assert 0 < result.epsilon <= 4.0 * 1.001


def test_weights_for_another_model_are_a_clear_error(tmp_path):
    from pocketlearn.checkpoint import save_checkpoint
    from pocketlearn.federated.config import parse_config
    from pocketlearn.federated.experiment import build_server
    from pocketlearn.models import build_model

    save_checkpoint(tmp_path / "digits.pt", {"model": build_model("digits-mlp").state_dict()})
    config = _config("full").run_config(tmp_path / "digits.pt")
    with pytest.raises(CheckpointError, match="model.init"):
        build_server(parse_config({**config.model_dump(), "data": {"name": "digits", "num_clients": 4}}), None)


def test_a_crashed_run_resumes_and_reports_the_whole_run(tmp_path):
    config = _config("bias")

    def crash(record):
        if record.round == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_keyboard(config, tmp_path / "run", on_round=crash)
    resumed = run_keyboard(config, tmp_path / "run")
    fresh = run_keyboard(config, tmp_path / "fresh")
    assert [r["round"] for r in resumed.rounds] == [1, 2]
    assert resumed.before == fresh.before and resumed.after == pytest.approx(fresh.after)
