import pytest
import torch
from torch import nn

from pocketlearn.errors import ConfigError
from pocketlearn.evaluate import evaluate
from pocketlearn.methods import make_method
from pocketlearn.methods.lora import LoraConfig, inject_lora, lora_layers, lora_parameters, merge_lora
from pocketlearn.models import GPTConfig, TinyGPT, build_model, mlp
from tests.conftest import eval_batches, train_batches


def sideways(x):
    """The same 8x8 digits, seen by a sensor mounted sideways (each image transposed): (N, 64) -> (N, 64)."""
    return x.view(-1, 8, 8).transpose(1, 2).reshape(-1, 64)


@pytest.fixture
def pretrained_mlp(digits, digits_mlp):
    method = make_method("backprop", digits_mlp, lr=0.1, momentum=0.9)
    for batch in train_batches(digits, epochs=3):
        method.step(batch)
    return digits_mlp


def test_lora_adapts_a_pretrained_mlp_and_leaves_its_weights_alone(digits, pretrained_mlp):
    shifted = (sideways(digits[0]), digits[1], sideways(digits[2]), digits[3])
    base = {n: p.clone() for n, p in pretrained_mlp.named_parameters()}
    before = evaluate(pretrained_mlp, eval_batches(shifted))
    method = make_method("lora", pretrained_mlp, rank=8, lr=0.1)  # head frozen: only the adapter on layer 1
    for batch in train_batches(shifted, epochs=3):
        method.step(batch)
    after = evaluate(method.model, eval_batches(shifted))
    assert before["accuracy"] < 0.4
    assert after["accuracy"] > 0.85
    assert after["loss"] < before["loss"] * 0.2
    for name, p in method.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base[name.replace("base_layer.", "")]), name


def test_trainable_count_is_rank_times_in_plus_out():
    model = mlp(64, (32, 16), 10)
    method = make_method("lora", model, rank=4)
    assert method.targets == ["1", "3"]  # every Linear but the head (5)
    assert method.num_trainable() == 4 * (64 + 32) + 4 * (32 + 16)
    assert set(method.trainable_parameters()) == set(lora_parameters(model))


def test_head_and_biases_train_when_asked():
    model = mlp(64, (32, 16), 10)
    method = make_method("lora", model, rank=2, train_head=True, train_biases=True)
    extra = set(method.trainable_parameters()) - set(lora_parameters(model))
    assert extra == {"1.base_layer.bias", "3.base_layer.bias", "5.weight", "5.bias"}


def test_convolutions_are_adapted_too(digits_cnn):
    method = make_method("lora", digits_cnn, rank=2)
    assert method.targets == ["0", "3", "7"]  # two convs and the hidden Linear; the head (9) stays plain
    assert isinstance(method.model[9], nn.Linear)


def test_outputs_at_init_equal_the_original_model(digits, digits_mlp):
    x = digits[0][:32]
    expected = digits_mlp(x)
    method = make_method("lora", digits_mlp, rank=8)
    assert torch.equal(method.model(x), expected)  # B starts at zero


def test_merge_gives_the_adapted_models_outputs(digits, digits_mlp):
    method = make_method("lora", digits_mlp, rank=4, lr=0.1)
    for batch in train_batches(digits)[:5]:
        method.step(batch)
    x = digits[2][:64]
    with torch.no_grad():
        adapted = method.model(x)
        merged = merge_lora(method.model)
        torch.testing.assert_close(merged(x), adapted, rtol=1e-5, atol=1e-5)
    assert not lora_layers(merged)
    assert isinstance(merged[1], nn.Linear)
    assert set(merged.state_dict()) == {"1.weight", "1.bias", "3.weight", "3.bias"}


def text_batch(text: bytes):
    """Four 32-byte windows of ``text`` repeated: inputs (4, 32) and next-byte targets (4, 32)."""
    ids = torch.tensor(list(text * 8))
    return (torch.stack([ids[i:i + 32] for i in range(0, 128, 32)]),
            torch.stack([ids[i + 1:i + 33] for i in range(0, 128, 32)]))


def test_lora_adapts_a_pretrained_tiny_gpt_to_a_new_text():
    model = TinyGPT(GPTConfig(block_size=32))
    pretrain = make_method("backprop", model, lr=3e-3, optimizer="adamw")
    for _ in range(60):
        pretrain.step(text_batch(b"the quick brown fox jumps over the lazy dog. "))
    method = make_method("lora", model, rank=4, lr=1e-2, optimizer="adamw")
    assert "lm_head" not in method.targets and "blocks.0.attn.qkv" in method.targets
    losses = [method.step(text_batch(b"pocketlearn trains where the data lives. ")) for _ in range(30)]
    assert losses[-1] < losses[0] * 0.2


def test_bad_config_names_every_problem(digits_mlp):
    with pytest.raises(ConfigError, match="rank should be >= 1.*alpha.*dropout.*target_modules is empty"):
        make_method("lora", digits_mlp, rank=0, alpha=0, dropout=1.5, target_modules=())
    with pytest.raises(ConfigError, match="weight layers are"):
        make_method("lora", digits_mlp, target_modules=["q_proj"])
    assert LoraConfig.from_dict({"target_modules": ["1"]}).target_modules == ("1",)


def test_injecting_twice_is_a_clear_error(digits_mlp):
    assert inject_lora(digits_mlp, rank=2) == ["1"]
    with pytest.raises(ConfigError, match="already has LoRA adapters"):
        inject_lora(digits_mlp, rank=2)


def test_a_few_lora_steps_fit_smollm2_to_one_text():
    from pocketlearn.models.pretrained import load_smollm2

    model, tokenizer = load_smollm2()
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids  # (1, T)
    batch = (ids[:, :-1], ids[:, 1:])
    method = make_method("lora", model, rank=8, lr=1e-3, optimizer="adamw")
    assert len(method.targets) == 30 * 7  # q, k, v, o, gate, up, down in each of the 30 blocks; not lm_head
    losses = [method.step(batch) for _ in range(3)]
    assert losses[-1] < losses[0] - 0.5


def test_lora_with_activation_checkpointing_takes_the_same_steps():
    import torch

    from pocketlearn.methods import make_method
    from pocketlearn.models import build_model, get_model_spec

    batch = get_model_spec("tiny-gpt").example_batch(4, 16)
    losses = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        method = make_method("lora", build_model("tiny-gpt"), lr=0.05, rank=4, checkpointing=checkpointing)
        losses.append([method.step(batch) for _ in range(3)])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert losses[0][-1] < losses[0][0]


def test_frozen_a_from_a_shared_seed_is_the_same_on_every_device():
    first, second = (make_method("lora", build_model("digits-mlp"), rank=2, train_a=False, init_seed=7)
                     for _ in range(2))
    a_first = {n: p for n, p in first.model.named_parameters() if ".lora_A." in n}
    a_second = dict(second.model.named_parameters())
    assert a_first and all(torch.equal(p, a_second[n]) for n, p in a_first.items())
    assert all(".lora_A." not in n for n in first.trainable_parameters())


def test_the_factor_names_are_peft_s():
    from peft.tuners.lora import LoraLayer

    from pocketlearn.methods.lora import FACTORS

    assert tuple(LoraLayer.adapter_layer_names) == FACTORS


def test_the_fused_adapter_on_a_quantized_layer_matches_peft_s_forward_and_gradients():
    import peft

    from pocketlearn.methods.lora import inject_lora
    from pocketlearn.quant import QuantLinear

    torch.manual_seed(0)
    net = torch.nn.Sequential(QuantLinear.from_linear(torch.nn.Linear(40, 24), 4), torch.nn.LayerNorm(24))
    inject_lora(net, rank=4, target_modules=["0"])
    layer = net[0]
    torch.nn.init.normal_(layer.lora_B["default"].weight)  # B starts at zero: make the adapter matter
    x = torch.randn(3, 5, 40, requires_grad=True)
    fused, reference = layer(x), peft.tuners.lora.Linear.forward(layer, x)
    assert type(layer).forward is not peft.tuners.lora.Linear.forward
    torch.testing.assert_close(fused, reference)
    factors = [layer.lora_A["default"].weight, layer.lora_B["default"].weight]
    grads = [torch.autograd.grad(out.square().sum(), [x, *factors]) for out in (fused, reference)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
