import pytest
import torch
from torch.nn import functional as F

from pocketlearn.quant import chunked_cross_entropy, chunked_scores, quantize


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_chunked_loss_and_gradient_match_the_full_cross_entropy(softcap):
    g = torch.Generator().manual_seed(0)
    table = quantize(torch.randn(1000, 64, generator=g), 8)
    weight = table.dequantize()
    hidden = torch.randn(2, 9, 64, generator=g)
    targets = torch.randint(0, 1000, (2, 9), generator=g)
    targets[0, :3] = -100  # padding is left out
    h1, h2 = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    lean = chunked_cross_entropy(h1, targets, table, chunk=128, softcap=softcap)
    logits = h2 @ weight.T
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    full = F.cross_entropy(logits.reshape(-1, 1000), targets.reshape(-1), ignore_index=-100)
    lean.backward()
    full.backward()
    assert torch.allclose(lean, full, atol=1e-5)
    assert torch.allclose(h1.grad, h2.grad, atol=1e-6)


def test_scores_give_per_token_loss_and_top3():
    g = torch.Generator().manual_seed(1)
    table = quantize(torch.randn(700, 32, generator=g), 4)
    hidden, targets = torch.randn(5, 32, generator=g), torch.randint(0, 700, (5,), generator=g)
    losses, best = chunked_scores(hidden, targets, table, chunk=100)
    logits = hidden @ table.dequantize().T
    assert torch.allclose(losses, F.cross_entropy(logits, targets, reduction="none"), atol=1e-5)
    assert torch.equal(best, logits.topk(3, dim=-1).indices)
