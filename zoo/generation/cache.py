"""A key/value cache for autoregressive transformers: prefill once, then one token a step.

The cache belongs to generation, not to a model: any network that calls
`cache.update(layer, k, v)` in its attention layers can be decoded by `zoo.generation`. Buffers are
allocated once for the whole generation (`max_length` positions), so a decoding step writes one
position instead of copying the whole history as `torch.cat` would; beam search reorders the
batch rows with `reorder`.
"""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer keys and values of shape (batch, heads, positions, head_dim), preallocated.

    `update(layer, k, v)` appends the new positions of one layer and returns that layer's keys and
    values so far. All layers advance together: the cache length grows when the last layer of a step
    has written (`advance` is called by the model after its layer loop).
    """

    def __init__(self, max_length: int) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        self.max_length = max_length
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.length = 0  # positions already stored (the same in every layer)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new = k.shape[2]
        end = self.length + new
        if end > self.max_length:
            raise ValueError(
                f"the KV cache holds {self.max_length} positions and this step would need {end}: "
                "create it with a larger max_length (prompt length + max_new_tokens)"
            )
        if layer == len(self.keys):  # first step: allocate this layer's buffers
            shape = (k.shape[0], k.shape[1], self.max_length, k.shape[3])
            self.keys.append(k.new_empty(shape))
            self.values.append(v.new_empty(shape))
        elif layer > len(self.keys):
            raise ValueError(f"layer {layer} written before layer {len(self.keys)}")
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, new: int) -> None:
        """Mark `new` positions as stored in every layer (after a forward pass over them)."""
        self.length += new

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep batch rows `rows` (beam search: the beams each surviving hypothesis came from)."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
