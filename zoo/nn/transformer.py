"""A GPT-2-style decoder stack shared by the token families: `gpt` (causal), `vq_transformer` (causal, text
then image codes) and `maskgit` (bidirectional, `causal=False`), and later the text-diffusion families.

Token embeddings plus learned position embeddings (or rotary ones, `rope=True`, Su et al. 2021),
pre-LayerNorm blocks of self-attention (`F.scaled_dot_product_attention`) and a tanh-GELU MLP, a final
LayerNorm, and an output layer tied to the token embeddings. Names follow GPT-2 (`wte`, `wpe`,
`blocks.i.attn.qkv`, ...), so `gpt`'s `load_gpt2_weights` maps a `transformers` GPT-2 onto it.

`Transformer.forward(ids, cache=, position_ids=, attention_mask=) -> logits` is the callable contract of
`zoo.generation`: a causal model is decoded by it with a `KVCache`. A bidirectional one (`causal=False`)
lets every token see every other (real) token: MaskGIT predicts masked image codes from all the others.

    net = Transformer(vocab_size=512, block_size=128, n_layer=4, n_head=4, n_embd=128)          # causal
    net = Transformer(vocab_size=512, block_size=80, n_layer=4, n_head=4, n_embd=128, causal=False)
    logits = net(ids)                                                                             # (B, T, V)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.generation import KVCache
from zoo.nn.embeddings import rotary_embedding


class SelfAttention(nn.Module):
    """Multi-head self-attention over (B, T, C); causal (each query sees itself and the past) or not."""

    def __init__(
        self, width: int, heads: int, dropout: float, bias: bool, rope: bool, causal: bool = True
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"n_embd ({width}) must be a multiple of n_head ({heads})")
        self.heads, self.dropout, self.rope, self.causal = heads, dropout, rope, causal
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        positions: torch.Tensor,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if self.rope:
            heads_positions = positions[:, None]  # (B, 1, T): the same positions for every head
            q, k = rotary_embedding(q, heads_positions), rotary_embedding(k, heads_positions)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        dropout = self.dropout if self.training else 0.0
        if mask is None:  # no padding: plain attention (a single new causal query sees everything)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=self.causal and t > 1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(b, t, c)))


CausalSelfAttention = SelfAttention  # its name when it lived in plugins/gpt.py


class MLP(nn.Module):
    def __init__(self, width: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(width, 4 * width, bias=bias)
        self.proj = nn.Linear(4 * width, width, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(
        self, width: int, heads: int, dropout: float, bias: bool, rope: bool, eps: float, causal: bool = True
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps, bias=bias)
        self.attn = SelfAttention(width, heads, dropout, bias, rope, causal)
        self.ln_2 = nn.LayerNorm(width, eps=eps, bias=bias)
        self.mlp = MLP(width, dropout, bias)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        positions: torch.Tensor,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, positions, cache, layer)
        return x + self.mlp(self.ln_2(x))


def attention_mask_for(
    attention_mask: torch.Tensor | None, new: int, total: int, causal: bool = True
) -> torch.Tensor | None:
    """The boolean (B, 1, new, total) mask of `new` queries (the last positions) over `total` keys, or
    None when nothing is padded (then attention needs no mask). Every query may see itself, so a padding
    query never has an empty row (which would give NaNs). `causal=False`: every query sees every real key."""
    if attention_mask is None or bool(attention_mask[:, :total].all()):
        if not causal:
            return None
        return None if new == total or new == 1 else _causal(new, total, attention_mask)
    keys = attention_mask[:, None, None, :total]
    if causal:
        keys = _causal(new, total, attention_mask) & keys
    return keys | _diagonal(new, total, attention_mask.device)


def _causal(new: int, total: int, like: torch.Tensor | None) -> torch.Tensor:
    device = like.device if like is not None else None
    return torch.ones(new, total, dtype=torch.bool, device=device).tril(diagonal=total - new)


def _diagonal(new: int, total: int, device: torch.device) -> torch.Tensor:
    return torch.eye(new, total, dtype=torch.bool, device=device).roll(total - new, dims=1)


class Transformer(nn.Module):
    """The network: `forward(ids, cache=, position_ids=, attention_mask=) -> logits`, the callable
    contract of `zoo.generation`; `causal=False` for bidirectional attention (no KV cache then: a new
    token would change every earlier one's output)."""

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float = 0.0,
        bias: bool = True,
        rope: bool = False,
        layer_norm_eps: float = 1e-5,
        causal: bool = True,
    ) -> None:
        super().__init__()
        self.block_size, self.rope, self.causal = block_size, rope, causal
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = None if rope else nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(n_embd, n_head, dropout, bias, rope, layer_norm_eps, causal) for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(n_embd, eps=layer_norm_eps, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017), as GPT-2
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/sqrt(2 * layers)
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self,
        ids: torch.Tensor,
        cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if cache is not None and not self.causal:
            raise ValueError("a bidirectional transformer (causal=False) cannot decode with a KV cache")
        past = cache.length if cache is not None else 0
        new = ids.shape[1]
        if position_ids is None:
            position_ids = torch.arange(past, past + new, device=ids.device).expand(ids.shape[0], new)
        if self.wpe is not None and int(position_ids.max()) >= self.block_size:
            raise ValueError(
                f"position {int(position_ids.max())} is beyond the model's context of {self.block_size} tokens "
                "(block_size): use a shorter prompt or fewer new tokens"
            )
        x = self.wte(ids)
        if self.wpe is not None:
            x = x + self.wpe(position_ids)
        x = self.drop(x)
        mask = attention_mask_for(
            attention_mask.bool() if attention_mask is not None else None, new, past + new, self.causal
        )
        for layer, block in enumerate(self.blocks):
            x = block(x, mask, position_ids, cache, layer)
        if cache is not None:
            cache.advance(new)
        return self.lm_head(self.ln_f(x))
