"""Discrete image tokens: vector quantisers that turn an encoder's feature map into codes (`vqgan`, and the
token generators over its codes)."""

from zoo.tokens.vq import QuantizerOutput, VectorQuantizer, code_usage

__all__ = ["QuantizerOutput", "VectorQuantizer", "code_usage"]
