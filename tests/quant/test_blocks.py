import pytest
import torch

from pocketlearn.errors import ConfigError
from pocketlearn.quant import GROUP, quantize


@pytest.mark.parametrize("bits, tolerance", [(4, 0.09), (8, 0.01)])
def test_relative_error_is_that_of_the_format(bits, tolerance):
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    q = quantize(w, bits)
    error = ((q.dequantize() - w).norm() / w.norm()).item()
    assert 0 < error < tolerance


def test_storage_is_a_fraction_of_fp32():
    w = torch.randn(128, 512)
    assert quantize(w, 4).nbytes == 128 * 512 // 2 + 2 * 2 * 128 * 512 // GROUP  # nibbles + fp16 scale, minimum
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


def test_rows_dequantize_on_their_own():
    w = torch.randn(50, 70)  # 70 columns: the last group is padded
    q = quantize(w, 4)
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
