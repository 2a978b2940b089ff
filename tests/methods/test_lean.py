import copy

import pytest
import torch
from torch import nn

from pocketlearn.memory.estimate import saved_by_module
from pocketlearn.methods import make_method
from pocketlearn.methods.lean import (
    LeanBatchNorm2d,
    LeanReLU,
    LeanReLU6,
    _pack_with_torch,
    _unpack_with_torch,
    make_lean,
    pack_bits,
    unpack_bits,
)
from pocketlearn.models.efficientnet import EfficientNetLite

TINY_STAGES = ((1, 3, 1, 8, 1), (4, 3, 2, 12, 2), (4, 5, 2, 16, 1))


def tiny_efficientnet(classes: int = 5) -> EfficientNetLite:
    """An EfficientNet-shaped network small enough for a test: the same blocks, padding and layer names."""
    torch.manual_seed(0)
    model = EfficientNetLite(classes, stages=TINY_STAGES, stem=8, head=32)
    for m in model.modules():  # pretrained-looking batch norms: statistics and scales away from 0 and 1
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("n", [1, 7, 8, 13, 64])
def test_bits_pack_eight_to_a_byte_and_unpack_exactly(n):
    mask = torch.rand(n, 3) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_bits(packed, mask.shape), mask)
    # an accelerator's tensors take torch ops: the same bytes
    assert torch.equal(_pack_with_torch(mask.reshape(-1)), packed)
    assert torch.equal(_unpack_with_torch(packed, mask.numel()).view(mask.shape), mask)


@pytest.mark.parametrize(("lean", "plain"), [(LeanReLU(), nn.ReLU()), (LeanReLU6(), nn.ReLU6())])
def test_masked_activations_give_the_plain_gradient_and_keep_one_bit_per_element(lean, plain):
    x = (torch.randn(4, 6, 9, 9) * 5).requires_grad_(True)
    grad = torch.randn(4, 6, 9, 9)
    torch.testing.assert_close(lean(x), plain(x))
    torch.testing.assert_close(torch.autograd.grad(lean(x), x, grad)[0], torch.autograd.grad(plain(x), x, grad)[0])
    holder = nn.Sequential(lean)
    assert sum(saved_by_module(holder, lambda: holder(x)).values()) == -(-x.numel() // 8)


def test_a_frozen_batch_norm_saves_nothing_and_its_bias_gets_the_plain_gradient():
    plain = tiny_efficientnet()._bn0
    lean = copy.deepcopy(plain)
    for bn in (plain, lean):
        bn.weight.requires_grad_(False)
    make_lean(lean)
    assert type(lean) is LeanBatchNorm2d
    lean.train()  # a frozen batch norm normalizes with its running statistics, even in training mode
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    grad = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(lean(x), plain(x))
    for a, b in zip(torch.autograd.grad(lean(x), (x, lean.bias), grad),
                    torch.autograd.grad(plain(x), (x, plain.bias), grad), strict=True):
        torch.testing.assert_close(a, b)
    holder = nn.Sequential(lean)
    assert sum(saved_by_module(holder, lambda: holder(x)).values()) == 0


@pytest.mark.parametrize("method", ["bias", "tinytl", "sparse"])
def test_the_lean_path_gives_plain_autograds_gradients_for_the_trained_parameters(method):
    x, y = torch.rand(3, 3, 33, 30), torch.tensor([0, 3, 4])
    lean = make_method(method, tiny_efficientnet()).model
    plain = copy.deepcopy(lean)
    for m in plain.modules():  # back to PyTorch's own layers (same parameters, same frozen statistics)
        for lean_cls, plain_cls in ((LeanBatchNorm2d, nn.BatchNorm2d), (LeanReLU6, nn.ReLU6), (LeanReLU, nn.ReLU)):
            if type(m) is lean_cls:
                m.__class__ = plain_cls
    for model in (lean, plain):
        model.eval()  # frozen statistics on both; dropout off
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
    trained = [(n, p) for n, p in lean.named_parameters() if p.requires_grad]
    assert trained
    reference = dict(plain.named_parameters())
    for name, p in trained:
        torch.testing.assert_close(p.grad, reference[name].grad, msg=name)


def test_bias_only_keeps_only_activation_masks_in_the_network():
    """The audit: every byte a bias-only step saves, by module. Blocks keep 1 bit per ReLU6 element, nothing else."""
    model = make_method("bias", tiny_efficientnet()).model.train()
    x = torch.rand(2, 3, 32, 32)
    saved = saved_by_module(model, lambda: model(x))
    relu_elements = []
    model.act.register_forward_hook(lambda m, i, o: relu_elements.append(o.numel()))
    for block in model._blocks:
        block.act.register_forward_hook(lambda m, i, o: relu_elements.append(o.numel()))
    model(x)
    masks = sum(-(-n // 8) for n in relu_elements)
    in_blocks = sum(v for k, v in saved.items() if k.startswith("_blocks.") or k in ("act", "_bn0", "_bn1"))
    assert in_blocks == masks
    # what is left is the head's input (its weight trains) and the dropout mask: (batch, 32) each
    assert sum(saved.values()) - masks <= 2 * 32 * 4 * 2


def test_tinytl_keeps_the_masks_and_only_the_branches_downsampled_inputs():
    model = make_method("tinytl", tiny_efficientnet()).model.train()
    x = torch.rand(2, 3, 32, 32)
    inputs: list[int] = []
    for block in model._blocks:
        if hasattr(block, "block"):  # wrapped: the branch keeps its input pooled by 2 (4x smaller)
            block.register_forward_pre_hook(lambda m, i: inputs.append(i[0].nbytes // 4))
    saved = saved_by_module(model, lambda: model(x))
    branches = sum(v for k, v in saved.items() if k.startswith("_blocks.") and k.count(".") == 1)
    assert inputs and branches == sum(inputs)


def test_only_batch_norms_that_normalize_with_their_batch_have_running_statistics_to_send():
    norms = [n for n, m in tiny_efficientnet().named_modules() if isinstance(m, nn.BatchNorm2d)]
    every = sorted(f"{n}.{s}" for n in norms for s in ("running_mean", "running_var"))
    assert make_method("bias", tiny_efficientnet()).running_statistics() == {}  # frozen: running statistics
    assert sorted(make_method("backprop", tiny_efficientnet()).running_statistics()) == every
    assert sorted(make_method("bias", tiny_efficientnet(), train_norms=True).running_statistics()) == every
