"""The diffusion transformer, DiT (Peebles & Xie 2023), with optional text cross-attention.

An image (B, C, H, W) is cut into p×p patches, each patch becomes a token (a linear map of its pixels plus a
fixed 2D sin-cos position), and a stack of transformer blocks runs over the tokens. Everything the network
is conditioned on — the timestep, the class label, a pooled text vector — is summed into one conditioning
vector c, and c steers every block through adaLN-Zero: a LayerNorm without parameters whose shift and
scale are regressed from c, plus a gate on each residual branch, also from c. The regressions start at
zero, so each block starts as the identity and the network's output starts at zero. A final adaLN-modulated
linear maps each token back to a patch of p×p×out_channels values.

    net = DiT(image_size=16, in_channels=4, patch_size=2, hidden_size=384, depth=12, num_heads=6, num_classes=10)
    out = net(x_t, t, label)      # x_t (B, 4, 16, 16); t (B,) float on the 0..1000 scale; label (B,) long
    net = DiT(image_size=16, in_channels=4, context_dim=128, pooled_dim=128)
    out = net(x_t, t, context=states, context_mask=mask, pooled=pooled)   # states (B, L, 128), mask (B, L) bool
    net = from_diffusers_dit("path/to/DiT-XL-2-256")   # a local diffusers DiT folder (or its pipeline folder)

The call signature is the U-Net's (`zoo.nn.unet.UNet`), so a family swaps backbones without other changes.

Conventions:
- **Time.** `t` is a float tensor (B,) (or a scalar) on the 0..1000 scale: DDPM timesteps 0..999, or flow
  time in [0, 1] multiplied by 1000 as Stable Diffusion 3 does. The family decides which. The sinusoidal
  frequencies (max period 10000, as in DiT) are chosen for that range; flow time in [0, 1] given as is would
  reach only the slowest, nearly constant sinusoids.
- **Labels.** `label` is the class id; id `num_classes` (or `label=None`) is the null label of
  classifier-free guidance. Label dropout is the family's job: the network has no randomness of its own.
- **Learned σ.** With `learn_sigma=True` the network has twice the output channels, as DiT's
  variance-learning models have: the first half is the prediction (ε, v, velocity), the second half the
  interpolation weight of Nichol & Dhariwal's learned variance. Families that learn no variance use the
  first half only.
- **Text.** Cross-attention (PixArt-α, Chen et al. 2023), not SD3's joint attention (MMDiT). Each block
  gets a pre-norm cross-attention sublayer from the image tokens to `context` (B, L, context_dim), with
  padded tokens masked by `context_mask`; its output projection starts at zero (as in PixArt-α), so the
  block is still the identity at initialisation. The pooled text vector is embedded and added to c.
  Why cross-attention: the block stays an adaLN-Zero DiT block whatever the conditioning, so class-,
  text- and unconditional models are one network; the text states are read only (no second stream of
  weights per block, as MMDiT has: a q/kv/out projection instead), which keeps a CPU-sized model small; and
  the call signature and the text encoder's states are exactly the U-Net's. The cost is that text tokens
  are not refined by the image, which MMDiT's joint attention does; at zoo's scale this did not seem
  worth a second set of attention, MLP and modulation weights in every block.
- **Positions** are fixed, not learned (DiT, MAE): `sincos_2d_positions`, recomputed for inputs of another
  size than `image_size`.

Checked against diffusers' `DiTTransformer2DModel` with ported weights (`from_diffusers_dit`); see
tests/test_dit.py for the two places where diffusers departs from the DiT code and which zoo follows.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import Mlp
from timm.models.vision_transformer import Attention
from torch import nn
from torch.utils.checkpoint import checkpoint

from zoo.nn.embeddings import sinusoidal_embedding

TIMESTEP_FREQUENCIES = 256  # width of the sinusoidal timestep features (DiT's frequency_embedding_size)


def sincos_2d_positions(dim: int, height: int, width: int) -> torch.Tensor:
    """Fixed positions of a row-major `height` × `width` grid of patches: (height * width, dim) float32.

    As DiT and MAE (`get_2d_sincos_pos_embed`): the first dim/2 channels encode the column, the last dim/2
    the row, each as `[sin | cos]` at frequencies 10000^(-i / (dim/4)), i < dim/4."""
    if dim % 4:
        raise ValueError(f"2D sin-cos positions need a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")

    def axis(coordinates: torch.Tensor) -> torch.Tensor:
        cos_sin = sinusoidal_embedding(coordinates.flatten(), dim // 2)
        return cos_sin.roll(dim // 4, dims=-1)  # MAE's 1D layout is [sin | cos], the halves swapped

    return torch.cat([axis(cols), axis(rows)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # 1 + scale: a zero regression leaves the normalised tokens as they are
    return x * (1 + scale) + shift


class CrossAttention(nn.Module):
    """Pre-norm multi-head attention from the image tokens to context tokens; padded context is masked."""

    def __init__(self, hidden_size: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.q = nn.Linear(hidden_size, hidden_size)
        self.kv = nn.Linear(context_dim, 2 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None
    ) -> torch.Tensor:
        q = rearrange(self.q(self.norm(x)), "b n (h d) -> b h n d", h=self.num_heads)
        k, v = rearrange(self.kv(context), "b l (two h d) -> two b h l d", two=2, h=self.num_heads)
        mask = None if context_mask is None else context_mask[:, None, None, :].to(torch.bool)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(rearrange(attended, "b h n d -> b n (h d)"))


class DiTBlock(nn.Module):
    """Self-attention and MLP, each behind an adaLN-Zero modulated LayerNorm and a gate; optional
    cross-attention to a context between them (PixArt-α's place for it)."""

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, context_dim: int | None = None
    ) -> None:
        super().__init__()
        # no affine parameters: the modulation from c is the affine transform
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.cross_attn = CrossAttention(hidden_size, context_dim, num_heads) if context_dim else None
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(
            hidden_size, int(hidden_size * mlp_ratio), act_layer=partial(nn.GELU, approximate="tanh")
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        modulation = self.adaLN_modulation(c)[:, None]  # (B, 1, 6 * D): per sample, the same for every token
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=-1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this DiT cross-attends to a context: pass context (B, L, context_dim)")
            x = x + self.cross_attn(x, context, context_mask)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map from each token to its patch of output values."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class TimestepEmbedder(nn.Module):
    """DiT's timestep embedding: [cos | sin] sinusoids of t (max period 10000), then Linear-SiLU-Linear."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(TIMESTEP_FREQUENCIES, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = sinusoidal_embedding(t, TIMESTEP_FREQUENCIES)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class DiT(nn.Module):
    """Diffusion transformer over (B, in_channels, H, W) with H and W multiples of `patch_size`; see the
    module docstring. Parameter names follow DiT's code where they can (`x_embedder`, `t_embedder`,
    `y_embedder`, `blocks`, `final_layer`, `adaLN_modulation`)."""

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 4,
        patch_size: int = 2,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        learn_sigma: bool = False,
        out_channels: int | None = None,
        context_dim: int | None = None,
        pooled_dim: int | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"DiT: hidden_size {hidden_size} does not split into {num_heads} heads")
        if image_size % patch_size:
            raise ValueError(f"DiT: image_size {image_size} is not a multiple of patch_size {patch_size}")
        out_channels = out_channels or in_channels
        self.image_size, self.in_channels, self.patch_size = image_size, in_channels, patch_size
        self.out_channels = 2 * out_channels if learn_sigma else out_channels
        self.learn_sigma = learn_sigma
        self.num_classes = num_classes
        self.gradient_checkpointing = gradient_checkpointing

        # a linear map of the flattened patch: DiT's strided convolution, written as what it computes
        self.x_embedder = nn.Linear(patch_size * patch_size * in_channels, hidden_size)
        grid = image_size // patch_size
        # fixed, so not saved: a checkpoint stays loadable into a model built for another image size
        self.register_buffer("pos_embed", sincos_2d_positions(hidden_size, grid, grid), persistent=False)
        self.t_embedder = TimestepEmbedder(hidden_size)
        # row num_classes is the null label of classifier-free guidance (DiT's LabelEmbedder)
        self.y_embedder = nn.Embedding(num_classes + 1, hidden_size) if num_classes > 0 else None
        # the pooled text vector joins c through the same Linear-SiLU-Linear as SD3's pooled projection
        self.pooled_embedder = (
            nn.Sequential(nn.Linear(pooled_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
            if pooled_dim
            else None
        )
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio, context_dim) for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform linears with zero biases, N(0, 0.02) embeddings, and zero
        for every modulation's last linear, every cross-attention's output and the final linear."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        zero = [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for block in self.blocks:
            zero.append(block.adaLN_modulation[-1])
            if block.cross_attn is not None:
                zero.append(block.cross_attn.proj)
        for linear in zero:  # adaLN-Zero: every block starts as the identity, the output at zero
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def embed(
        self, t: torch.Tensor, label: torch.Tensor | None = None, pooled: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The conditioning vector c (B, hidden_size): the timestep's embedding, plus the label's (None: the
        null label) and the pooled vector's when the network has them."""
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            if label is None:
                label = torch.full((len(t),), self.num_classes, device=t.device, dtype=torch.long)
            c = c + self.y_embedder(label)
        if self.pooled_embedder is not None:
            if pooled is None:
                raise ValueError("this DiT was built with pooled_dim: pass pooled (B, pooled_dim)")
            c = c + self.pooled_embedder(pooled)
        return c

    def positions(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings of a height × width grid of patches (the cached ones at `image_size`)."""
        if height == width == self.image_size // self.patch_size:
            return self.pos_embed
        return sincos_2d_positions(self.pos_embed.shape[-1], height, width).to(self.pos_embed)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        label: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        control: Any = None,
        image_context: torch.Tensor | None = None,
        image_scale: float | torch.Tensor = 1.0,
    ) -> torch.Tensor:
        """x (B, in_channels, H, W), t (B,) or scalar on the 0..1000 scale, label (B,) long, context
        (B, L, context_dim) with context_mask (B, L) (true: a real token), pooled (B, pooled_dim).
        Returns (B, out_channels, H, W), out_channels doubled with learn_sigma. `guidance`, `control` and
        `image_context` / `image_scale` are the U-Net's arguments (a consistency student's guidance scale, a
        ControlNet's residuals, IP-Adapter's image tokens), kept so the two backbones share one signature;
        the DiT has none of those inputs and refuses them."""
        for name, value in (("guidance", guidance), ("control", control), ("image_context", image_context)):
            if value is not None:
                raise ValueError(
                    f"this DiT takes no {name} (lcm, controlnet and ip_adapter build on a U-Net ldm): pass {name}=None"
                )
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"DiT: image size {tuple(x.shape[-2:])} is not a multiple of patch_size {p}")
        if t.ndim == 0:
            t = t.expand(len(x))
        c = self.embed(t, label, pooled)
        height, width = x.shape[-2] // p, x.shape[-1] // p
        # patch pixels flattened as (row, column, channel), the order DiT's unpatchify uses for its output
        patches = rearrange(x, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)
        tokens = self.x_embedder(patches) + self.positions(height, width)
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                # recompute the block's activations in the backward pass: memory for one block's compute
                tokens = checkpoint(block, tokens, c, context, context_mask, use_reentrant=False)
            else:
                tokens = block(tokens, c, context, context_mask)
        out = self.final_layer(tokens, c)
        return rearrange(out, "b (h w) (p q c) -> b c (h p) (w q)", h=height, p=p, q=p)


# --- weights from diffusers ------------------------------------------------------------------------------


def diffusers_dit_state_dict(state_dict: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """A diffusers `DiTTransformer2DModel` state dict renamed (and reshaped) for zoo's `DiT`.

    diffusers gives every block its own copy of the timestep and label embedders (its DiT conversion script
    writes the checkpoint's single embedder into each); zoo has one, as DiT does, so the copies must agree."""
    sd = dict(state_dict)
    out: dict[str, torch.Tensor] = {}
    weight = sd.pop("pos_embed.proj.weight")  # (D, C, p, q) convolution over patches
    out["x_embedder.weight"] = rearrange(weight, "d c p q -> d (p q c)")
    out["x_embedder.bias"] = sd.pop("pos_embed.proj.bias")
    sd.pop("pos_embed.pos_embed", None)  # zoo computes its fixed positions itself
    embedder = {
        "norm1.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
        "norm1.emb.timestep_embedder.linear_2": "t_embedder.mlp.2",
    }
    for i in range(depth):
        block = f"transformer_blocks.{i}."
        for theirs, ours in embedder.items():
            for kind in ("weight", "bias"):
                tensor = sd.pop(f"{block}{theirs}.{kind}")
                if i == 0:
                    out[f"{ours}.{kind}"] = tensor
                elif not torch.equal(tensor, out[f"{ours}.{kind}"]):
                    raise ValueError(f"diffusers DiT: block {i}'s timestep embedder differs from block 0's")
        labels = sd.pop(f"{block}norm1.emb.class_embedder.embedding_table.weight")
        if i == 0:
            out["y_embedder.weight"] = labels
        elif not torch.equal(labels, out["y_embedder.weight"]):
            raise ValueError(f"diffusers DiT: block {i}'s label embedder differs from block 0's")
        ours = f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{ours}adaLN_modulation.1.{kind}"] = sd.pop(f"{block}norm1.linear.{kind}")
            out[f"{ours}attn.qkv.{kind}"] = torch.cat(
                [sd.pop(f"{block}attn1.to_{name}.{kind}") for name in "qkv"], dim=0
            )
            out[f"{ours}attn.proj.{kind}"] = sd.pop(f"{block}attn1.to_out.0.{kind}")
            out[f"{ours}mlp.fc1.{kind}"] = sd.pop(f"{block}ff.net.0.proj.{kind}")
            out[f"{ours}mlp.fc2.{kind}"] = sd.pop(f"{block}ff.net.2.{kind}")
    for kind in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{kind}"] = sd.pop(f"proj_out_1.{kind}")
        out[f"final_layer.linear.{kind}"] = sd.pop(f"proj_out_2.{kind}")
    if sd:
        raise ValueError(f"diffusers DiT: weights zoo's DiT has no place for: {sorted(sd)[:5]}")
    return out


def from_diffusers_dit(source: str | os.PathLike | nn.Module) -> DiT:
    """zoo's `DiT` with the weights of a diffusers `DiTTransformer2DModel`: the model itself, or a local
    folder holding one (`config.json` and weights) or a `DiTPipeline` folder with it in `transformer/`.

    Never downloads. The network then computes what the DiT code computes; diffusers' own forward differs
    slightly in two places (timestep frequencies, the MLP LayerNorm's eps; see tests/test_dit.py)."""
    if not isinstance(source, nn.Module):
        from diffusers import DiTTransformer2DModel

        folder = os.fspath(source)
        subfolder = (
            "transformer" if os.path.isfile(os.path.join(folder, "transformer", "config.json")) else None
        )
        source = DiTTransformer2DModel.from_pretrained(folder, subfolder=subfolder, local_files_only=True)
    config = source.config
    if config.norm_type != "ada_norm_zero" or config.activation_fn != "gelu-approximate":
        raise ValueError(
            f"diffusers DiT: only adaLN-Zero blocks with tanh-GELU MLPs port to zoo's DiT, got "
            f"norm_type={config.norm_type!r}, activation_fn={config.activation_fn!r}"
        )
    if not config.attention_bias or config.norm_elementwise_affine:
        raise ValueError(
            "diffusers DiT: zoo's DiT has attention biases and LayerNorms without affine parameters"
        )
    in_channels = config.in_channels
    out_channels = config.out_channels or in_channels
    learn_sigma = out_channels == 2 * in_channels
    net = DiT(
        image_size=config.sample_size,
        in_channels=in_channels,
        patch_size=config.patch_size,
        hidden_size=config.num_attention_heads * config.attention_head_dim,
        depth=config.num_layers,
        num_heads=config.num_attention_heads,
        num_classes=config.num_embeds_ada_norm,
        learn_sigma=learn_sigma,
        out_channels=in_channels if learn_sigma else out_channels,
    )
    net.load_state_dict(diffusers_dit_state_dict(source.state_dict(), config.num_layers))
    return net.to(next(source.parameters()).dtype)
