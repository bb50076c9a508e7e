"""A space-time U-Net for video diffusion: the image `UNet` of `zoo.nn.unet` with factorised attention.

Every block of the image U-Net (ResBlocks, spatial self-attention, cross-attention to text, down- and
up-sampling) runs on the frames as a batch of images (B*T, C, H, W), so it sees one frame at a time.
After each ResBlock group (each entry of the image U-Net's `down`, `mid` and `up` lists that holds a
ResBlock) a `TemporalAttention` block attends across the T frames *at each spatial position* (Ho et al.
2022, "Video Diffusion Models"; Singer et al. 2022, "Make-A-Video"; Blattmann et al. 2023). Spatial
layers therefore mix only within a frame and temporal layers only along time.

Temporal layers start as the identity: their output projection is zero-initialised, so a `VideoUNet`
whose image part holds an image model's weights (`inflate_image_unet`) computes exactly that image model
on every frame, and training adds motion on top (Make-A-Video's "inflation").

Frame positions enter the temporal attention as rotary embeddings (Su et al. 2021) of the frame index:
attention scores depend only on the distance between two frames, so a model trained on 8 frames runs on
16 (the distances beyond 7 are unseen, so quality there is measured, not promised; see
docs/families/video_diffusion.md).
Relative positions cannot tell a frame where in the clip it is, so two options add absolute ones, both
keeping inflation exact: `absolute_positions` (a sinusoidal frame-index encoding added to the temporal
blocks' tokens, as AnimateDiff's motion module) and `frame_embedding` (an embedding of the frame index added
to every ResBlock's timestep embedding through a zero-initialised projection).

    net = VideoUNet(in_channels=4, base_channels=64, channel_mults=(1, 2), attention_levels=(0, 1), context_dim=128)
    out = net(x_t, t, context=states, context_mask=mask, pooled=pooled)   # x_t (B, T, C, H, W), t (B,)
    video_net = inflate_image_unet(image_unet)                             # same outputs, frame by frame
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from zoo.nn.embeddings import rotary_embedding, sinusoidal_embedding
from zoo.nn.unet import Context, CrossAttention, ResBlock, SelfAttention, UNet, with_coordinates

__all__ = ["TemporalAttention", "VideoUNet", "inflate_image_unet", "rotary_embedding"]


class TemporalAttention(nn.Module):
    """Self-attention over the T frames at each spatial position of (B*T, C, H, W) features.

    LayerNorm over channels (per frame and position, not GroupNorm over the frame), so that nothing in
    this block mixes positions; rotary frame positions; output projection zero-initialised (identity)."""

    def __init__(
        self, channels: int, num_heads: int, embed_dim: int | None = None, absolute_positions: bool = False
    ) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"temporal attention: {channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        # sinusoidal frame-index encoding added to the normalised tokens (AnimateDiff's motion module, Guo
        # et al. 2023): with rotary positions alone a frame cannot tell where in the clip it is, so frames
        # of equal content attend alike and a clip cannot place "frame k of a left-moving clip"
        self.absolute_positions = absolute_positions
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)  # identity at initialisation: an inflated image model is unchanged
        nn.init.zeros_(self.out.bias)
        # optional adaptive LayerNorm (DiT's adaLN) from the clip's embedding (timestep + pooled text): the
        # temporal layers see the condition directly (e.g. the direction word). Zero-initialised: no effect
        # until trained, and per clip, so it mixes nothing across positions or clips.
        self.modulation = nn.Linear(embed_dim, 2 * channels) if embed_dim else None
        if self.modulation is not None:
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, frames: int, embedding: torch.Tensor | None = None) -> torch.Tensor:
        bt, c, height, width = x.shape
        if bt % frames:
            raise ValueError(f"a batch of {bt} frames is not a whole number of {frames}-frame clips")
        tokens = self.norm(rearrange(x, "(b t) c y x -> (b y x) t c", t=frames))
        if self.modulation is not None:
            if embedding is None:
                raise ValueError(
                    "this temporal attention is conditioned: pass the (B*T, embed_dim) embedding"
                )
            scale, shift = rearrange(
                self.modulation(F.silu(embedding)), "(b t) c -> b 1 t c", t=frames
            ).chunk(2, dim=-1)
            tokens = rearrange(tokens, "(b n) t c -> b n t c", b=bt // frames)
            tokens = rearrange(tokens * (1 + scale) + shift, "b n t c -> (b n) t c")
        positions = torch.arange(frames, device=x.device)
        if self.absolute_positions:
            tokens = tokens + sinusoidal_embedding(positions, c).to(tokens.dtype)
        q, k, v = rearrange(self.qkv(tokens), "n t (three h d) -> three n h t d", three=3, h=self.num_heads)
        q, k = rotary_embedding(q, positions), rotary_embedding(k, positions)
        # explicit softmax attention: the fused kernel's function, and over a few frames no slower on a CPU
        # (benchmarks/kernel_choices.py; figures in RESULTS.md under video_diffusion)
        scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        attended = rearrange(scores.softmax(-1) @ v, "n h t d -> n t (h d)")
        update = rearrange(self.out(attended), "(b y x) t c -> (b t) c y x", y=height, x=width)
        return x + update


def _has_resblock(blocks: nn.ModuleList) -> bool:
    return any(isinstance(block, ResBlock) for block in blocks)


def _width(blocks: nn.ModuleList) -> int:
    # the channels a ResBlock group outputs: its ResBlock's conv2 (upsampling keeps the width)
    return next(b for b in blocks if isinstance(b, ResBlock)).conv2.out_channels


class VideoUNet(nn.Module):
    """Noise prediction over clips (B, T, C, H, W): the image `UNet` per frame, temporal attention between.

    Takes the image UNet's arguments, plus `temporal_heads` (default: `num_heads`) and `temporal_levels` (the
    resolution levels that get temporal attention, default all; the middle always has it) and
    `temporal_conditioning` (adaptive LayerNorm in the temporal blocks from the timestep + pooled text
    embedding; off by default), `absolute_positions` and `frame_embedding` (absolute frame indices, see the
    module docstring; off by default). The image network
    is `self.image` (a plain `UNet`, so an image model's state dict loads into it); the temporal blocks are
    `self.temporal_down`, `self.temporal_mid`, `self.temporal_up`, one per ResBlock group."""

    def __init__(
        self,
        *,
        temporal_heads: int | None = None,
        temporal_levels: tuple[int, ...] | None = None,
        temporal_conditioning: bool = False,
        absolute_positions: bool = False,
        frame_embedding: bool = False,
        **unet_args: Any,
    ) -> None:
        super().__init__()
        self.image = UNet(**unet_args)
        width = 4 * self.image.base_channels  # the image U-Net's embedding width
        embed_dim = width if temporal_conditioning else None
        # the frame index, embedded and added to every ResBlock's embedding (so every spatial layer knows
        # which frame it draws); zero-initialised, so an inflated image model is unchanged
        self.frame_embedding = nn.Linear(width, width) if frame_embedding else None
        if self.frame_embedding is not None:
            nn.init.zeros_(self.frame_embedding.weight)
            nn.init.zeros_(self.frame_embedding.bias)
        heads = temporal_heads or unet_args.get("num_heads", 4)
        levels = len(unet_args.get("channel_mults", (1, 2, 2)))
        wanted = set(range(levels) if temporal_levels is None else temporal_levels)
        if not wanted <= set(range(levels)):
            raise ValueError(f"temporal_levels {temporal_levels} name levels outside 0..{levels - 1}")

        def temporal(groups: nn.ModuleList, group_levels: list[int]) -> nn.ModuleList:
            # nn.Identity where a group holds no ResBlock (a downsampling conv) or its level has no temporal
            # layer: keeps the indices aligned with the image U-Net's lists
            return nn.ModuleList(
                [
                    TemporalAttention(_width(g), heads, absolute_positions=absolute_positions)
                    if _has_resblock(g) and level in wanted
                    else nn.Identity()
                    for g, level in zip(groups, group_levels, strict=True)
                ]
            )

        down_levels, level = [], 0
        for group in self.image.down:
            down_levels.append(level)
            level += 0 if _has_resblock(group) else 1
        per_level = len(self.image.up) // levels  # num_res_blocks + 1 groups a level on the way up
        up_levels = [levels - 1 - i // per_level for i in range(len(self.image.up))]
        self.temporal_down = temporal(self.image.down, down_levels)
        self.temporal_mid = TemporalAttention(_width(self.image.mid), heads, embed_dim, absolute_positions)
        self.temporal_up = temporal(self.image.up, up_levels)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        label: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"VideoUNet takes clips (B, T, C, H, W), got a tensor of shape {tuple(x.shape)}")
        b, frames = x.shape[:2]
        if t.ndim == 0:
            t = t.expand(b)

        def per_frame(v: torch.Tensor | None) -> torch.Tensor | None:
            # every frame of a clip shares its clip's timestep, label and text
            return None if v is None else v.repeat_interleave(frames, dim=0)

        net = self.image
        t, label, context, context_mask, pooled = map(per_frame, (t, label, context, context_mask, pooled))
        # the image UNet's forward, unrolled so that temporal blocks can follow each ResBlock group
        embedding = net.embed(t, label, pooled)
        if self.frame_embedding is not None:
            index = sinusoidal_embedding(torch.arange(frames, device=x.device), embedding.shape[-1])
            embedding = embedding + self.frame_embedding(index.to(embedding.dtype)).repeat(b, 1)
        frames_in = x.flatten(0, 1)
        h = net.conv_in(with_coordinates(frames_in) if net.coordinates else frames_in)
        hs = [h]
        for blocks, temporal in zip(net.down, self.temporal_down, strict=True):
            h = self._group(blocks, temporal, h, embedding, context, context_mask, frames)
            hs.append(h)
        h = self._group(net.mid, self.temporal_mid, h, embedding, context, context_mask, frames)
        for blocks, temporal in zip(net.up, self.temporal_up, strict=True):
            h = self._group(
                blocks, temporal, torch.cat([h, hs.pop()], 1), embedding, context, context_mask, frames
            )
        out = net.conv_out(F.silu(net.norm_out(h)))
        return out.unflatten(0, (b, frames))

    @staticmethod
    def _group(
        blocks: nn.ModuleList,
        temporal: nn.Module,
        h: torch.Tensor,
        embedding: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
        frames: int,
    ) -> torch.Tensor:
        if not isinstance(temporal, TemporalAttention):
            return UNet._run(blocks, h, embedding, Context(context, context_mask))
        # temporal attention goes after the group's spatial layers, before any upsampling (cheaper there)
        for i, block in enumerate(blocks):
            if isinstance(block, nn.Upsample):
                h = temporal(h, frames, embedding)
                return UNet._run(blocks[i:], h, embedding, Context(context, context_mask))
            h = UNet._run(blocks[i : i + 1], h, embedding, Context(context, context_mask))
        return temporal(h, frames, embedding)


def inflate_image_unet(image_unet: UNet | dict[str, torch.Tensor], **video_args: Any) -> VideoUNet:
    """A `VideoUNet` whose spatial layers are `image_unet`'s (a `UNet`, or its state dict together with the
    `UNet` arguments it was built with) and whose temporal layers are the identity: on every frame it
    computes exactly what the image model computes. `video_args` may add `temporal_heads`/`temporal_levels`."""
    if isinstance(image_unet, UNet):
        state = image_unet.state_dict()
        video_args = {**unet_arguments(image_unet), **video_args}
    else:
        state = image_unet
    video = VideoUNet(**video_args)
    try:
        video.image.load_state_dict(state)
    except RuntimeError as err:  # missing/unexpected keys or other shapes
        raise ValueError(
            "the image U-Net's weights do not fit a VideoUNet built with these arguments: pass the UNet "
            f"arguments it was built with ({str(err).splitlines()[0]} ...)"
        ) from err
    return video


def unet_arguments(net: UNet) -> dict[str, Any]:
    """The constructor arguments of a built `UNet`, read back from its layers."""
    widths: list[int] = []  # per level
    attention_levels: list[int] = []
    groups_per_level: list[int] = [0]
    for group in net.down:
        if not _has_resblock(group):  # a downsampling conv closes a level
            groups_per_level.append(0)
            continue
        level = len(groups_per_level) - 1
        if len(widths) == level:
            widths.append(_width(group))
        groups_per_level[-1] += 1
        if any(isinstance(b, SelfAttention) for b in group) and level not in attention_levels:
            attention_levels.append(level)
    attention = next(b for b in net.mid if isinstance(b, SelfAttention))
    cross = next((b for b in net.mid if isinstance(b, CrossAttention)), None)
    return {
        "in_channels": net.conv_in.in_channels - 2 * net.coordinates,
        "coordinates": net.coordinates,
        "out_channels": net.conv_out.out_channels,
        "base_channels": net.base_channels,
        "channel_mults": tuple(w // net.base_channels for w in widths),
        "num_res_blocks": groups_per_level[0],
        "attention_levels": tuple(attention_levels),
        "num_heads": attention.num_heads,
        "dropout": next(b for b in net.mid if isinstance(b, ResBlock)).dropout.p,
        "num_classes": net.num_classes,
        "context_dim": cross.kv.in_features if cross is not None else None,
        "pooled_dim": net.pooled_projection.in_features if net.pooled_projection is not None else None,
    }
