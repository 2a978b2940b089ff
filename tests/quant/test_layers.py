import pytest
import torch
from torch import nn

from pocketlearn.evaluate import evaluate
from pocketlearn.methods import make_method
from pocketlearn.methods.base import cross_entropy, forward_loss, logits_of
from pocketlearn.quant import QuantEmbedding, QuantHead, QuantLinear, quantize_base, quantized_bits
from tests.quant.conftest import lm_batch, tiny_gemma


@pytest.mark.parametrize("bits", [4, 8])
def test_linear_forward_and_input_gradient_match_the_dequantized_reference(bits):
    linear = nn.Linear(100, 300)
    quant = QuantLinear.from_linear(linear, bits)
    reference = quant.dequantized()
    x = torch.randn(4, 7, 100)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out1, out2 = quant(x1), reference(x2)
    assert torch.allclose(out1, out2, atol=1e-5)
    out1.pow(2).sum().backward()
    out2.pow(2).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-4)


def test_the_frozen_weight_keeps_nothing_fp32_for_backward():
    quant = QuantLinear.from_linear(nn.Linear(64, 64), 4)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        quant(torch.randn(3, 64, requires_grad=True)).sum().backward()
    assert not [t for t in saved if t.dtype == torch.float32 and t.numel() >= 64 * 64]


def test_embedding_reads_only_its_rows_and_keeps_gemmas_scale():
    model = tiny_gemma()
    embedding = model.get_input_embeddings()
    ids = torch.tensor([[3, 1, 499]])
    quant = QuantEmbedding.from_embedding(embedding, 8)
    assert torch.allclose(quant(ids), embedding(ids), atol=0.05 * embedding(ids).abs().max().item())
    assert float(quant.embed_scale) == pytest.approx(64**0.5)


def test_quantize_base_swaps_every_frozen_layer_and_ties_the_head(tiny_lm):
    tiny_lm.requires_grad_(False)
    x, y = lm_batch(tiny_lm)
    with torch.no_grad():
        reference = logits_of(tiny_lm(x))
    quantize_base(tiny_lm, "q8")
    assert quantized_bits(tiny_lm) == 8
    assert not [n for n, m in tiny_lm.named_modules() if type(m) in (nn.Linear, nn.Embedding)]
    assert isinstance(tiny_lm.lm_head, QuantHead) and tiny_lm.lm_head.table is tiny_lm.get_input_embeddings()
    with torch.no_grad():
        logits = logits_of(tiny_lm(x))
        lean = forward_loss(tiny_lm, (x, y))
    assert (logits - reference).abs().max() < 0.05 * reference.abs().max()
    assert lean.item() == pytest.approx(cross_entropy(logits, y).item(), abs=1e-4)
    scores = evaluate(tiny_lm, [(x, y)])
    assert scores["loss"] == pytest.approx(lean.item(), abs=1e-4)
    assert scores["accuracy"] == pytest.approx((logits.argmax(-1) == y).float().mean().item())


def test_checkpointed_training_gives_the_same_gradients(tiny_lm):
    x, y = lm_batch(tiny_lm)
    grads = []
    for checkpointing in (False, True):
        model = type(tiny_lm)(tiny_lm.config)
        model.load_state_dict(tiny_lm.state_dict())
        method = make_method("lora", model, base="q4", checkpointing=checkpointing, init_seed=3)
        method.model.train()
        forward_loss(method.model, (x, y)).backward()
        grads.append({n: p.grad.clone() for n, p in method.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_lora_on_a_4bit_base_learns_and_trains_only_adapters(tiny_lm):
    x, y = lm_batch(tiny_lm, batch=4, length=8)
    method = make_method("lora", tiny_lm, base="q4", optimizer="adamw", lr=1e-2, checkpointing=True)
    assert quantized_bits(method.model) == 4
    assert all(".lora_" in n for n, p in method.model.named_parameters() if p.requires_grad)
    losses = [method.step((x, y)) for _ in range(15)]
    assert losses[-1] < losses[0] - 0.5


def test_a_quantized_base_merges_into_plain_layers(tiny_lm):
    from pocketlearn.methods.lora import merge_lora

    x, _ = lm_batch(tiny_lm)
    method = make_method("lora", tiny_lm, base="q4", init_seed=0)
    with torch.no_grad():
        for name, p in method.model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.1)
        before = logits_of(method.model(x))
    merged = merge_lora(method.model)
    assert not [m for m in merged.modules() if isinstance(m, QuantLinear)]
    with torch.no_grad():
        assert torch.allclose(logits_of(merged(x)), before, atol=1e-4)


def test_mezo_perturbs_lora_adapters_on_a_4bit_base(tiny_lm):
    from pocketlearn.errors import ConfigError

    x, y = lm_batch(tiny_lm, batch=4, length=8)
    method = make_method("mezo", tiny_lm, base="q4", subset="lora", lr=1e-2)
    assert quantized_bits(method.model) == 4
    assert method.params and all(".lora_" in n for n in method.params)
    before = {n: p.clone() for n, p in method.params.items()}
    losses = [method.step((x, y)) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(before[n], p) for n, p in method.params.items())
    with pytest.raises(ConfigError, match="cannot be perturbed"):
        make_method("mezo", tiny_gemma(), base="q4", subset="all")
