import pytest
import torch

from pocketlearn.errors import ConfigError, TrainingError
from pocketlearn.evaluate import evaluate
from pocketlearn.methods import make_method
from tests.conftest import eval_batches, train_batches


def test_backprop_learns_digits(digits, digits_mlp):
    before = evaluate(digits_mlp, eval_batches(digits))
    method = make_method("backprop", digits_mlp, lr=0.1, momentum=0.9)
    for batch in train_batches(digits, epochs=2):
        method.step(batch)
    after = evaluate(method.model, eval_batches(digits))
    assert after["loss"] < before["loss"] * 0.5
    assert after["accuracy"] > 0.85
    assert method.num_trainable() == sum(p.numel() for p in digits_mlp.parameters())


def test_checkpointing_gives_the_same_gradients(digits, digits_cnn):
    import copy

    import torch
    plain = make_method("backprop", copy.deepcopy(digits_cnn), lr=0.1)
    ckpt = make_method("backprop", digits_cnn, lr=0.1, checkpointing=True)
    batch = train_batches(digits, image=True)[0]
    for _ in range(3):
        assert plain.step(batch) == pytest.approx(ckpt.step(batch), rel=1e-5)
    for p, q in zip(plain.model.parameters(), ckpt.model.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_bad_config_names_every_problem(digits_mlp):
    with pytest.raises(ConfigError, match="lr should be positive.*momentum"):
        make_method("backprop", digits_mlp, lr=-1, momentum=2.0)
    with pytest.raises(ConfigError, match="no option"):
        make_method("backprop", digits_mlp, rank=3)


def test_nan_loss_is_a_clear_error(digits, digits_mlp):
    import torch
    method = make_method("backprop", digits_mlp)
    x, y = train_batches(digits)[0]
    with pytest.raises(TrainingError, match="Lower the learning rate"):
        method.step((x * torch.nan, y))


def test_partial_embedding_updates_move_only_the_rows_of_seen_tokens():
    import torch

    from pocketlearn.models import GPTConfig, TinyGPT

    model = TinyGPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = make_method("backprop", model, lr=0.5, embedding_rows="seen")
    x = torch.randint(0, 10, (4, 8))
    method.step((x, torch.randint(10, 20, (4, 8))))
    seen = torch.zeros(50, dtype=torch.bool)
    seen[:20] = True
    for name in ("wte.weight", "lm_head.weight", "lm_head.bias"):
        moved = (dict(model.named_parameters())[name] != before[name]).reshape(50, -1).any(1)
        assert moved[~seen].sum() == 0 and moved[seen].any(), name
    assert (model.blocks[0].fc.weight != before["blocks.0.fc.weight"]).any()  # the rest trains fully
    with pytest.raises(ConfigError, match="weight_decay"):
        make_method("backprop", model, embedding_rows="seen", weight_decay=0.1)


@pytest.mark.parametrize("lm", [False, True])
def test_micro_batches_give_the_update_of_the_whole_batch(lm):
    """Gradient accumulation: the same step for a fraction of the activations (padding tokens weighted out)."""
    from pocketlearn.methods.base import micro_batches
    from pocketlearn.models import TinyGPT
    from pocketlearn.models.tiny_gpt import GPTConfig

    torch.manual_seed(0)
    if lm:
        make = lambda: TinyGPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16))  # noqa: E731
        x, y = torch.randint(0, 50, (6, 8)), torch.randint(0, 50, (6, 8))
        y[0, :5] = -100  # an unequal count of tokens per part
    else:
        make = lambda: torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))  # noqa: E731
        x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    whole, parts = make(), make()
    parts.load_state_dict(whole.state_dict())
    a = make_method("backprop", whole, optimizer="adamw", lr=0.01)
    b = make_method("backprop", parts, optimizer="adamw", lr=0.01, micro_batch=4)
    assert len(micro_batches((x, y), 4)) == 2
    assert a.step((x, y)) == pytest.approx(b.step((x, y)), abs=1e-5)
    for p, q in zip(whole.parameters(), parts.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)
