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
