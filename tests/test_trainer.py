import subprocess
import sys
import textwrap

import pytest
import torch

from pocketlearn.checkpoint import CheckpointError
from pocketlearn.devices import DeviceProfile
from pocketlearn.errors import BudgetError
from pocketlearn.methods import make_method
from pocketlearn.models import mlp
from pocketlearn.trainer import LocalTrainer, TrainerConfig


def _trainer(tmp_path, epochs=2, **kw):
    torch.manual_seed(0)
    method = make_method("backprop", mlp(64, (32,), 10), lr=0.1, momentum=0.9)
    return LocalTrainer(method, TrainerConfig(epochs=epochs, batch_size=64, checkpoint_every=5),
                        checkpoint_path=tmp_path / "ckpt.pt", **kw)


def test_training_improves_and_evaluates(digits, tmp_path):
    result = _trainer(tmp_path).fit(digits[0], digits[1], eval_data=(digits[2], digits[3]))
    assert result.evaluations[-1]["accuracy"] > 0.85
    assert (tmp_path / "ckpt.pt").exists()


def test_a_killed_run_resumes_with_identical_weights(digits, tmp_path):
    """Kill a training process mid-run; the resumed run ends where an uninterrupted one does."""
    reference = _trainer(tmp_path / "ref")
    reference.fit(digits[0], digits[1])
    script = textwrap.dedent(f"""
        import os, torch
        from tests.conftest import load_digits_tensors
        from tests.test_trainer import _trainer
        from pathlib import Path
        d = load_digits_tensors()
        t = _trainer(Path({str(tmp_path / 'run')!r}))
        t.fit(d[0], d[1], on_step=lambda s, l: os._exit(9) if s == 13 else None)
    """)
    killed = subprocess.run([sys.executable, "-c", script], cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert killed.returncode == 9
    resumed = _trainer(tmp_path / "run")
    result = resumed.fit(digits[0], digits[1])
    assert result.resumed_from_step == 10  # last checkpoint before the kill at step 13
    for p, q in zip(reference.method.model.parameters(), resumed.method.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_corrupt_checkpoint_is_a_clear_error(digits, tmp_path):
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or truncated.*delete it"):
        _trainer(tmp_path).fit(digits[0], digits[1])


def test_budget_guard_names_the_need_and_the_way_out(digits, tmp_path):
    tiny = DeviceProfile("tiny", 10_000)
    with pytest.raises(BudgetError, match="needs about .* allows 9.8 KiB.*pocketlearn plan"):
        _trainer(tmp_path, device=tiny).fit(digits[0], digits[1])


def _small(path, *, epochs=1, batch_size=64, seed=0, lr=0.1, **kw):
    """A quick run on 256 examples (4 steps an epoch at batch 64), checkpointing every 2 steps."""
    torch.manual_seed(0)
    method = make_method("backprop", mlp(64, (32,), 10), lr=lr, momentum=0.9)
    return LocalTrainer(method, TrainerConfig(epochs=epochs, batch_size=batch_size, seed=seed, checkpoint_every=2),
                        checkpoint_path=path / "ckpt.pt", **kw)


@pytest.mark.parametrize("change,named", [
    ({"batch_size": 32}, "batch_size: checkpoint 64, now 32"),
    ({"seed": 1}, "seed: checkpoint 0, now 1"),
    ({"lr": 0.2}, "options: checkpoint .*'lr': 0.1.*now .*'lr': 0.2"),
    ({"epochs": 2, "settings": {"model": "other"}}, "model: checkpoint None, now 'other'"),
])
def test_a_checkpoint_of_other_settings_is_refused_by_name(digits, tmp_path, change, named):
    x, y = digits[0][:256], digits[1][:256]
    _small(tmp_path).fit(x, y)
    with pytest.raises(CheckpointError, match=f"other settings: {named}.*another checkpoint path.*--resume-anyway"):
        _small(tmp_path, **change).fit(x, y)


def test_other_data_or_fewer_epochs_are_refused(digits, tmp_path):
    x, y = digits[0][:256], digits[1][:256]
    _small(tmp_path, epochs=2).fit(x, y)
    with pytest.raises(CheckpointError, match="data_sha256: checkpoint '[0-9a-f]+', now '[0-9a-f]+'"):
        _small(tmp_path, epochs=2).fit(digits[0][256:512], digits[1][256:512])
    with pytest.raises(CheckpointError, match="examples: checkpoint 256, now 128"):
        _small(tmp_path, epochs=2).fit(x[:128], y[:128])
    with pytest.raises(CheckpointError, match="epochs: checkpoint 2, now 1"):
        _small(tmp_path, epochs=1).fit(x, y)
    with pytest.raises(CheckpointError, match="at step 8, past the 4 steps this run asks for"):
        _small(tmp_path, epochs=1, resume_anyway=True).fit(x, y)  # never reports more steps than asked


def test_more_epochs_continue_the_run_as_if_asked_from_the_start(digits, tmp_path):
    x, y = digits[0][:256], digits[1][:256]
    straight = _small(tmp_path / "straight", epochs=3)
    straight.fit(x, y)
    _small(tmp_path / "longer", epochs=1).fit(x, y)
    longer = _small(tmp_path / "longer", epochs=3)
    result = longer.fit(x, y)
    assert result.resumed_from_step == 4 and result.steps == 12
    assert result.notes == ["continuing the checkpoint's 1-epoch run to 3 epochs"]
    for p, q in zip(straight.method.model.parameters(), longer.method.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_resume_anyway_continues_under_the_new_settings_and_says_so(digits, tmp_path):
    x, y = digits[0][:256], digits[1][:256]
    _small(tmp_path).fit(x, y)
    result = _small(tmp_path, epochs=1, batch_size=32, lr=0.2, resume_anyway=True).fit(x, y)
    assert result.resumed_from_step == 4 and result.steps == 8  # 8 batches of 32 an epoch
    assert any("batch_size: checkpoint 64, now 32" in n for n in result.notes)
    assert any("optimizer state starts afresh" in n for n in result.notes)
    again = _small(tmp_path, epochs=1, batch_size=32, lr=0.2)  # the checkpoint now records the new settings
    assert again.fit(x, y).resumed_from_step == 8


def test_a_flipped_bit_in_a_saved_weight_is_refused_not_trained_on(digits, tmp_path):
    x, y = digits[0][:256], digits[1][:256]
    trainer = _small(tmp_path)
    trainer.fit(x, y)
    path = tmp_path / "ckpt.pt"
    data = bytearray(path.read_bytes())
    at = bytes(data).find(trainer.method.model.state_dict()["1.weight"].numpy().tobytes()[:64])
    assert at > 0
    data[at + 9] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is corrupt: .*sha256.*delete it .* to train from step 0"):
        _small(tmp_path).fit(x, y)
