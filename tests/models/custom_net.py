"""A user's own models, named by import path in tests (``tests.models.custom_net:small_cnn``)."""

from torch import nn

NOT_CALLABLE = 3


def small_cnn() -> nn.Module:
    """A CNN on sklearn digits (64 features as a 1x8x8 image), saying its shapes for planning."""
    model = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 10))
    model.input_shape = (64,)
    model.num_classes = 10
    return model


def bare_mlp() -> nn.Module:
    """An MLP on digits that says nothing about its shapes."""
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def with_dropout() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 10))


def not_a_module() -> dict:
    return {"weights": []}
