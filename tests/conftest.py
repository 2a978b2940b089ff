import pytest
import torch

from pocketlearn.data.digits import load_digits_tensors
from pocketlearn.evaluate import batches_of
from pocketlearn.memory.estimate import saved_bytes
from pocketlearn.methods.base import forward_loss
from pocketlearn.models import cnn, mlp


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits():
    """Real sklearn digits: x_train (N, 64), y_train, x_test, y_test."""
    return load_digits_tensors()


@pytest.fixture
def digits_mlp():
    return mlp(64, (32,), 10)


@pytest.fixture
def digits_cnn():
    """A small CNN for 8x8 digit images (B, 1, 8, 8)."""
    return cnn(1, 10, widths=(4, 8), image_size=8)


def train_batches(digits, batch_size=64, epochs=1, image=False):
    x, y = digits[0], digits[1]
    if image:
        x = x.view(-1, 1, 8, 8)
    out = []
    for e in range(epochs):
        out += batches_of(x, y, batch_size, seed=e)
    return out


def eval_batches(digits, image=False):
    x, y = digits[2], digits[3]
    return batches_of(x.view(-1, 1, 8, 8) if image else x, y, 256)


def saved_activation_bytes(model, batch=None, *, inputs=None):
    """Bytes autograd saves during forward (+ loss when a batch is given), the model's own state excluded."""
    model.train()
    return saved_bytes(model, lambda: forward_loss(model, batch) if batch is not None else model(inputs))


def assert_continues_identically(method, resumed, batches):
    """Step both methods through ``batches``; a resumed one must end on the same weights."""
    for batch in batches:
        method.step(batch)
        resumed.step(batch)
    for p, q in zip(method.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(p, q)
