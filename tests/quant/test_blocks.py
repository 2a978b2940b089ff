import pytest
import torch

from pocketlearn.errors import ConfigError
from pocketlearn.quant import GROUP, quantize


@pytest.mark.parametrize("bits, tolerance", [(4, 0.09), (5, 0.045), (8, 0.01)])
def test_relative_error_is_that_of_the_format(bits, tolerance):
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    q = quantize(w, bits)
    error = ((q.dequantize() - w).norm() / w.norm()).item()
    assert 0 < error < tolerance


def test_storage_is_a_fraction_of_fp32():
    w = torch.randn(128, 512)
    assert quantize(w, 4).nbytes == 128 * 512 // 2 + 2 * 2 * 128 * 512 // GROUP  # nibbles + fp16 scale, minimum
    assert quantize(w, 5).nbytes == quantize(w, 4).nbytes + 128 * 512 // 8  # one more bit per value
    assert quantize(w, 8).nbytes == 128 * 512 + 2 * 128 * 512 // GROUP


def test_a_4bit_gguf_grid_is_kept_exactly():
    """Weights already on a Q4_1 grid (SmolLM2's GGUF) come back bit for bit: re-quantizing loses nothing."""
    g = torch.Generator().manual_seed(1)
    scale = (torch.rand(40, 6, 1, generator=g) * 0.01 + 1e-4).half().float()
    minimum = (-torch.rand(40, 6, 1, generator=g) * 0.1).half().float()
    levels = torch.randint(0, 16, (40, 6, GROUP), generator=g)
    levels[..., 0], levels[..., 1] = 0, 15
    w = (scale * levels + minimum).reshape(40, -1)
    assert torch.equal(quantize(w, 4).dequantize(), w)


def test_a_gguf_5_bit_grid_is_kept_exactly_even_when_a_group_spans_few_levels():
    """Q5_0 blocks (scale · (q − 16), q in 0..31; Gemma's GGUF) come back at 5 bits up to the fp16 rounding
    of the group's minimum (a hundredth of a step), where 4 bits lose up to half a step."""
    g = torch.Generator().manual_seed(3)
    scale = (torch.rand(40, 6, 1, generator=g) * 0.01 + 1e-4).half().float()
    levels = torch.randint(2, 30, (40, 6, GROUP), generator=g)  # few groups touch either end of 0..31
    w = (scale * (levels - 16)).reshape(40, -1)
    step = scale.expand(40, 6, GROUP).reshape(40, -1)
    assert ((quantize(w, 5).dequantize() - w).abs() / step).max() < 0.01
    assert ((quantize(w, 4).dequantize() - w).abs() / step).max() > 0.4


@pytest.mark.parametrize("bits", [4, 5, 8])
def test_rows_dequantize_on_their_own(bits):
    w = torch.randn(50, 70)  # 70 columns: the last group is padded
    q = quantize(w, bits)
    full = q.dequantize()
    assert full.shape == (50, 70)
    ids = torch.tensor([7, 0, 49, 7])
    assert torch.equal(q.dequantize(ids), full[ids])
    assert torch.equal(q.dequantize(slice(10, 20)), full[10:20])


def test_least_squares_refit_beats_min_max_on_outliers():
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(2))
    w[:, ::GROUP] *= 8  # one outlier per group
    from pocketlearn.quant import blocks

    refit = (quantize(w, 4).dequantize() - w).pow(2).sum()
    old = blocks.REFITS
    try:
        blocks.REFITS = 0
        plain = (quantize(w, 4).dequantize() - w).pow(2).sum()
    finally:
        blocks.REFITS = old
    assert refit < plain


def test_bad_input_is_named():
    with pytest.raises(ConfigError, match="2-D"):
        quantize(torch.zeros(3, 4, 5))
    with pytest.raises(ConfigError, match="bits"):
        quantize(torch.zeros(3, 32), 3)  # type: ignore[arg-type]
