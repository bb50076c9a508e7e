"""A diffusion U-Net (Ho et al. 2020; Dhariwal & Nichol 2021), small enough for a CPU.

The shape of diffusers' `UNet2DModel`: a sinusoidal timestep embedding, residual blocks with
GroupNorm that add the embedding, self-attention at the lower resolutions, skip connections
between the encoder and decoder halves. Class labels (with an extra "null" label for
classifier-free guidance) are embedded and added to the timestep embedding. With `context_dim`,
every attention level (and the middle) also cross-attends to a sequence of context vectors (text
token states, as in Rombach et al. 2022), and with `pooled_dim` a pooled context vector is added to
the timestep embedding (as Imagen and SDXL add a pooled text embedding).

    net = UNet(in_channels=1, base_channels=32, channel_mults=(1, 2, 2), attention_levels=(1, 2), num_classes=10)
    out = net(x_t, t, label)        # t: (B,) float or long timesteps; label: (B,) long, num_classes = null
    net = UNet(in_channels=4, context_dim=128, pooled_dim=128)
    out = net(x_t, t, context=states, context_mask=mask, pooled=pooled)   # states (B, L, 128), mask (B, L) bool
    net.add_guidance_embedding(256)             # a latent consistency student (lcm): guided in one pass
    out = net(x_t, t, context=states, context_mask=mask, pooled=pooled, guidance=w)    # w: (B,) scales
    net.add_x_head()                            # a progressive or consistency student of an eps teacher
    out = net(x_t, t, context=..., control=ControlResiduals(down, mid))   # a ControlNet's residuals added
    net.add_image_attention(image_dim=128)      # IP-Adapter's decoupled cross-attention
    out = net(x_t, t, context=..., image_context=tokens, image_scale=1.0)   # tokens (B, N, 128)
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from zoo.nn.embeddings import sinusoidal_embedding
from zoo.nn.layers import group_norm


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_channels), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embed = nn.Linear(embed_dim, out_channels)
        self.norm2, self.conv2 = group_norm(out_channels), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable deep training
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.embed(F.silu(embedding))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention: {channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[-2]
        q, k, v = rearrange(
            self.qkv(self.norm(x)), "b (three h d) y x -> three b h (y x) d", three=3, h=self.num_heads
        )
        attended = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(rearrange(attended, "b h (y x) d -> b (h d) y x", y=height))


class CrossAttention(nn.Module):
    """Queries from the feature map, keys and values from the context; padded context tokens are masked.

    After `add_image_attention`, a second attention over image tokens (IP-Adapter's decoupled
    cross-attention, Ye et al. 2023, eq. 5) shares the queries and is added, times `image_scale`, before
    the output projection: out(Attn(q, K_text, V_text) + scale * Attn(q, K_image, V_image))."""

    def __init__(self, channels: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention: {channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.image_kv: nn.Linear | None = None  # add_image_attention
        # a list while `zoo.diffusion.attend_excite.captured_attention` reads the text attention: each forward
        # then computes softmax(q k^T / sqrt(d)) explicitly and appends it, (B, heads, H, W, L); None (the
        # rest of the time): the fused kernel, untouched
        self.attention_probabilities: list[torch.Tensor] | None = None
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)  # starts as the identity, like every other block here
        nn.init.zeros_(self.out.bias)

    def add_image_attention(self, image_dim: int) -> None:
        """IP-Adapter's `to_k_ip` / `to_v_ip` (one linear here, as `kv` is), initialised from the text's
        `kv` when the widths agree (the paper's initialisation), else at random."""
        self.image_kv = nn.Linear(image_dim, self.kv.out_features)
        if image_dim == self.kv.in_features:
            self.image_kv.load_state_dict(self.kv.state_dict())

    def _attend(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        k, v = rearrange(kv, "b l (two h d) -> two b h l d", two=2, h=self.num_heads)
        attn_mask = None if mask is None else mask[:, None, None, :].to(torch.bool)
        return rearrange(F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask), "b h n d -> b n (h d)")

    def _attend_explicitly(
        self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`_attend`'s result computed step by step, and its probabilities (B, heads, N, L)."""
        k, v = rearrange(kv, "b l (two h d) -> two b h l d", two=2, h=self.num_heads)
        logits = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, None, :].to(torch.bool), float("-inf"))
        probabilities = logits.softmax(dim=-1)
        return rearrange(probabilities @ v, "b h n d -> b n (h d)"), probabilities

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        mask: torch.Tensor | None,
        image_context: torch.Tensor | None = None,
        image_scale: float | torch.Tensor = 1.0,
    ) -> torch.Tensor:
        height = x.shape[-2]
        q = rearrange(
            self.q(rearrange(self.norm(x), "b c y x -> b (y x) c")), "b n (h d) -> b h n d", h=self.num_heads
        )
        if self.attention_probabilities is None:
            attended = self._attend(q, self.kv(context), mask)
        else:
            attended, probabilities = self._attend_explicitly(q, self.kv(context), mask)
            self.attention_probabilities.append(
                rearrange(probabilities, "b h (y x) l -> b h y x l", y=height)
            )
        if image_context is not None and self.image_kv is not None:
            scale = torch.as_tensor(image_scale, dtype=x.dtype, device=x.device)
            scale = scale.view(-1, 1, 1) if scale.ndim else scale  # one per sample, or one for all
            attended = attended + scale * self._attend(q, self.image_kv(image_context), None)
        return x + rearrange(self.out(attended), "b (y x) c -> b c y x", y=height)


class ControlResiduals(NamedTuple):
    """What a ControlNet adds to a U-Net: one tensor per skip connection (`UNet.encode`'s order) and one
    to the middle block's output (diffusers' down_block_additional_residuals and
    mid_block_additional_residual)."""

    down: list[torch.Tensor]
    mid: torch.Tensor

    def scaled(self, scale: float) -> ControlResiduals:
        return ControlResiduals([scale * r for r in self.down], scale * self.mid)

    def __add__(self, other: ControlResiduals) -> ControlResiduals:  # type: ignore[override]
        return ControlResiduals(
            [a + b for a, b in zip(self.down, other.down, strict=True)], self.mid + other.mid
        )


class Context(NamedTuple):
    """What the cross-attention blocks attend to: text token states and their mask, and image tokens."""

    context: torch.Tensor | None
    mask: torch.Tensor | None
    image_context: torch.Tensor | None = None
    image_scale: float | torch.Tensor = 1.0


def with_coordinates(x: torch.Tensor) -> torch.Tensor:
    """`x` (B, C, H, W) with two more channels: each cell's x and y, from -1 (left, top) to 1."""
    ys = torch.linspace(-1, 1, x.shape[-2], device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, x.shape[-1], device=x.device, dtype=x.dtype)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))  # (2, H, W): x, then y
    return torch.cat([x, grid.expand(len(x), -1, -1, -1)], dim=1)


class UNet(nn.Module):
    """Noise-prediction U-Net over (B, C, H, W); see the module docstring."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        base_channels: int = 64,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: tuple[int, ...] = (2,),
        num_heads: int = 4,
        dropout: float = 0.0,
        num_classes: int = 0,
        context_dim: int | None = None,
        pooled_dim: int | None = None,
        coordinates: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        # CoordConv (Liu et al. 2018): each cell's x and y as two more input channels. Attention has no
        # positions of its own here, so without them where a cell is reaches it only through the zero
        # padding of the convolutions; a caption's "left of" needs to know.
        self.coordinates = coordinates
        embed_dim = 4 * base_channels
        self.base_channels = base_channels
        self.num_classes = num_classes
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )
        # label num_classes is the "no label" of classifier-free guidance
        self.label_embedding = nn.Embedding(num_classes + 1, embed_dim) if num_classes > 0 else None
        self.pooled_projection = nn.Linear(pooled_dim, embed_dim) if pooled_dim else None
        self.guidance_projection: nn.Linear | None = None  # add_guidance_embedding

        def attention(width: int) -> list[nn.Module]:
            blocks: list[nn.Module] = [SelfAttention(width, num_heads)]
            if context_dim:
                blocks.append(CrossAttention(width, context_dim, num_heads))
            return blocks

        widths = [base_channels * m for m in channel_mults]
        self.conv_in = nn.Conv2d(in_channels + 2 * coordinates, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        skips = [widths[0]]
        channels = widths[0]
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                blocks = nn.ModuleList([ResBlock(channels, width, embed_dim, dropout)])
                if level in attention_levels:
                    blocks.extend(attention(width))
                self.down.append(blocks)
                channels = width
                skips.append(channels)
            if level < len(widths) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(channels, channels, 3, stride=2, padding=1)]))
                skips.append(channels)

        self.mid = nn.ModuleList(
            [
                ResBlock(channels, channels, embed_dim, dropout),
                *attention(channels),
                ResBlock(channels, channels, embed_dim, dropout),
            ]
        )

        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for i in range(num_res_blocks + 1):
                blocks = nn.ModuleList([ResBlock(channels + skips.pop(), width, embed_dim, dropout)])
                channels = width
                if level in attention_levels:
                    blocks.extend(attention(width))
                if level > 0 and i == num_res_blocks:
                    blocks.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    blocks.append(nn.Conv2d(channels, channels, 3, padding=1))
                self.up.append(blocks)
        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        label: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        control: ControlResiduals | None = None,
        image_context: torch.Tensor | None = None,
        image_scale: float | torch.Tensor = 1.0,
    ) -> torch.Tensor:
        """The network's output for x_t at timesteps t. `control`: a ControlNet's residuals, added to the
        skip connections and the middle block's output; `image_context` (B, N, image_dim): image tokens
        for the decoupled cross-attention of `add_image_attention`, weighted by `image_scale`."""
        if t.ndim == 0:
            t = t.expand(len(x))
        embedding = self.embed(t, label, pooled, guidance)
        attend = Context(context, context_mask, image_context, image_scale)
        h, skips = self.encode(x, embedding, attend)
        if control is not None:
            if len(control.down) != len(skips):
                raise ValueError(
                    f"control has {len(control.down)} residuals; this U-Net has {len(skips)} skip connections"
                )
            skips = [s + r for s, r in zip(skips, control.down, strict=True)]
            h = h + control.mid
        for blocks in self.up:
            h = self._run(blocks, torch.cat([h, skips.pop()], dim=1), embedding, attend)
        return self.conv_out(F.silu(self.norm_out(h)))

    def encode(
        self, x: torch.Tensor, embedding: torch.Tensor, attend: Context, added: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The encoder half and the middle block: (the middle block's output, the skip connections: the
        input convolution's output, then each down block's). `added` joins the input convolution's output
        (a ControlNet's condition, as diffusers' ControlNetModel adds it)."""
        h = self.conv_in(with_coordinates(x) if self.coordinates else x)
        if added is not None:
            h = h + added
        skips = [h]
        for blocks in self.down:
            h = self._run(blocks, h, embedding, attend)
            skips.append(h)
        return self._run(self.mid, h, embedding, attend), skips

    def encoder_copy(self) -> UNet:
        """A copy of this U-Net without the decoder half (`up`, the output layers): ControlNet's trainable
        copy, which runs `embed` and `encode` only."""
        keep = {name: getattr(self, name) for name in ("up", "norm_out", "conv_out")}
        for name in keep:
            delattr(self, name)
        try:
            return copy.deepcopy(self)
        finally:
            for name, module in keep.items():
                setattr(self, name, module)

    def add_image_attention(self, image_dim: int) -> None:
        """IP-Adapter's decoupled cross-attention in every cross-attention block (see `CrossAttention`)."""
        blocks = [m for m in self.modules() if isinstance(m, CrossAttention)]
        if not blocks:
            raise ValueError("this U-Net has no cross-attention (built without context_dim)")
        for block in blocks:
            block.add_image_attention(image_dim)

    def add_guidance_embedding(self, dim: int = 256) -> None:
        """A guidance-scale input, for a consistency student that learns a guided teacher in one pass (LCM,
        Luo et al. 2023, sec. 4.2; diffusers' `time_cond_proj_dim`): the sinusoidal embedding of w * 1000
        (`dim` wide), projected without bias and added to the timestep's sinusoidal features. The projection
        starts at zero, so the network computes what it did before."""
        self.guidance_projection = nn.Linear(dim, self.base_channels, bias=False)
        nn.init.zeros_(self.guidance_projection.weight)

    def add_x_head(self) -> None:
        """As many output channels again, after the network's own, zero at the start: the x head of
        Salimans & Ho's merged parameterisation (`zoo.diffusion.merged_x0`), for a student distilled from
        an eps teacher. The network's own channels compute what they did before."""
        own = self.conv_out
        wide = nn.Conv2d(own.in_channels, 2 * own.out_channels, own.kernel_size, padding=own.padding)
        with torch.no_grad():
            wide.weight.zero_()
            wide.bias.zero_()
            wide.weight[: own.out_channels].copy_(own.weight)
            wide.bias[: own.out_channels].copy_(own.bias)
        self.conv_out = wide

    def embed(
        self,
        t: torch.Tensor,
        label: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The embedding every ResBlock adds: timestep (B,), plus the label's (None: the null label), the
        pooled context's and the guidance scale's when the network has them. (B, 4 * base_channels)."""
        features = sinusoidal_embedding(t, self.base_channels)
        if self.guidance_projection is not None:
            if guidance is None:
                raise ValueError(
                    "this U-Net has a guidance embedding (a consistency student): pass guidance (B,)"
                )
            width = self.guidance_projection.in_features
            features = features + self.guidance_projection(sinusoidal_embedding(guidance * 1000, width))
        embedding = self.time_mlp(features)
        if self.label_embedding is not None:
            if label is None:  # unconditional: the null label
                label = torch.full((len(t),), self.num_classes, device=t.device, dtype=torch.long)
            embedding = embedding + self.label_embedding(label)
        if self.pooled_projection is not None:
            if pooled is None:
                raise ValueError("this U-Net was built with pooled_dim: pass pooled (B, pooled_dim)")
            embedding = embedding + self.pooled_projection(pooled)
        return embedding

    @staticmethod
    def _run(
        blocks: nn.ModuleList, h: torch.Tensor, embedding: torch.Tensor, attend: Context
    ) -> torch.Tensor:
        for block in blocks:
            if isinstance(block, ResBlock):
                h = block(h, embedding)
            elif isinstance(block, CrossAttention):
                if attend.context is None:
                    raise ValueError(
                        "this U-Net cross-attends to a context: pass context (B, L, context_dim)"
                    )
                h = block(h, attend.context, attend.mask, attend.image_context, attend.image_scale)
            else:
                h = block(h)
        return h
