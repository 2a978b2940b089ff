"""A quantized frozen base: block-quantized weights dequantized only while they compute."""

from pocketlearn.quant.blocks import GROUP, QuantizedMatrix, quantize
from pocketlearn.quant.layers import QuantEmbedding, QuantHead, QuantLinear
from pocketlearn.quant.loss import chunked_cross_entropy, chunked_scores
from pocketlearn.quant.model import BASES, Base, base_bits, lean_lm_loss, quantize_base, quantized_bits

__all__ = ["BASES", "GROUP", "Base", "QuantEmbedding", "QuantHead", "QuantLinear", "QuantizedMatrix", "base_bits",
           "chunked_cross_entropy", "chunked_scores", "lean_lm_loss", "quantize", "quantize_base",
           "quantized_bits"]
