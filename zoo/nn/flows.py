"""Normalizing flows on images: the layers of NICE, RealNVP and Glow, and a multi-scale flow with an exact
log-likelihood (Dinh et al. 2015, 2017; Kingma & Dhariwal 2018).

A flow is a bijection f from an image x to a latent z whose Jacobian determinant is cheap, so that

    log p(x) = log p_Z(f(x)) + log |det df/dx|                              (change of variables)

and a stack of bijections f = f_K o ... o f_1 adds their log-determinants. Every layer here has
`forward(x) -> (z, logdet)`, logdet (B,) the log |det| of that layer per example, and `inverse(z) -> x`:

- `Coupling`: half of the elements (a checkerboard of pixels, or half of the channels) passes unchanged and
  parameterises a shift (NICE, additive) or a shift and scale (RealNVP / Glow, affine) of the other half;
  triangular Jacobian, so logdet = sum log scale. The scale is `sigmoid(s + 2)`: bounded in (0, 1), near 0.88
  at initialisation, which keeps deep stacks from blowing up (Glow's code). The last convolution of each
  coupling network starts at zero, so every coupling starts as (nearly) the identity.
- `Squeeze`: (C, H, W) -> (4C, H/2, W/2), a permutation (logdet 0), so channel couplings see space.
- `ActNorm`: a per-channel affine map whose first forward batch sets it to zero mean and unit variance
  (data-dependent initialisation); the `initialized` flag is a saved buffer, so a reloaded model keeps its
  trained parameters instead of initialising again.
- `InvConv1x1`: Glow's invertible 1x1 convolution, W = P L (U + diag(sign * exp(log_s))) (LU-decomposed:
  logdet = H W sum log_s, no determinant to compute).
- `ReverseChannels`: the fixed permutation RealNVP alternates with.
- `SplitPrior`: multi-scale factoring-out: half of the channels leaves the flow here, standardised under a
  learned Gaussian whose mean and log-scale a (zero-initialised) convolution computes from the other half.
- `TopPrior`: the learned (optionally class-conditional) diagonal Gaussian of the last level's latent; it is
  also NICE's diagonal scaling layer.

`FlowModel` stacks them into the multi-scale architecture of RealNVP (`layout="realnvp"`) or Glow
(`layout="glow"`). Its latent is the list of standardised Gaussians eps of every level (what leaves at each
split and at the top), so `encode` / `decode` are exact inverses, sampling is `decode` of eps ~ N(0, T^2 I)
(temperature T), and log p(x) = sum log N(eps; 0, I) + total logdet.

Pixels, dequantisation and bits per dimension (`dequantize`, `bits_per_dim`): see `bits_per_dim`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

LOG_2PI = math.log(2 * math.pi)
PIXEL_LEVELS = 256  # 8-bit pixels u in {0, ..., 255}
LAYOUTS = ("realnvp", "glow")
COUPLINGS = ("additive", "affine")
MASKS = ("checkerboard", "channel")
PERMUTATIONS = ("none", "reverse", "conv1x1")


# --- pixels, dequantisation and bits per dimension ------------------------------------------------------


def to_pixels(images: Tensor) -> Tensor:
    """8-bit pixel values u in {0, ..., 255} (float) of images in [0, 1], the way they are stored in a PNG."""
    return (images * 255).round().clamp(0, 255)


def dequantize(pixels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantisation: y = u + v, v ~ U[0, 1)^D, scaled from [0, 256) to x = y / 128 - 1 in [-1, 1).
    `generator` None draws v from torch's global generator (training); a seeded one gives a fixed draw."""
    noise = torch.rand(pixels.shape, generator=generator, device=pixels.device, dtype=pixels.dtype)
    return (pixels + noise) / (PIXEL_LEVELS / 2) - 1


def bin_centres(pixels: Tensor) -> Tensor:
    """The centre of each pixel's dequantisation cell, (u + 0.5) / 128 - 1: the deterministic code of an
    image (`encode` for editing and interpolation)."""
    return (pixels + 0.5) / (PIXEL_LEVELS / 2) - 1


def to_images(x: Tensor) -> Tensor:
    """The 8-bit images in [0, 1] whose dequantisation cells hold x in [-1, 1): u = floor((x + 1) * 128).

    A code far from the data (a strong edit) can overflow an affine coupling's inverse, which divides by its
    scale: 1 edit in 180 on the digits realnvp gave inf - inf = NaN pixels. Those decode to black, infinities
    to the nearest level, so an image always comes back (with the overflow visible in it)."""
    x = torch.nan_to_num(x, nan=-1.0, posinf=1.0, neginf=-1.0)
    return torch.floor((x + 1) * (PIXEL_LEVELS / 2)).clamp(0, 255) / 255


def bits_per_dim(log_px: Tensor, num_dims: int) -> Tensor:
    """Bits per dimension of 8-bit data from the flow's log-density log p_X(x) (nats) of its dequantised,
    scaled input x = (u + v) / 128 - 1 (see `dequantize`).

    Derivation. Pixels u are integers in {0, ..., 255}^D. For any density p_Y on [0, 256)^D,
    P(u) = integral over v in [0, 1)^D of p_Y(u + v) dv is a probability distribution over the discrete u
    (the unit cells tile the space), and by Jensen's inequality

        log P(u) >= E_v[log p_Y(u + v)],      v ~ U[0, 1)^D            (uniform dequantisation)

    (Theis et al. 2016; Ho et al. 2019). The flow models x = y / 128 - 1 rather than y; by the change of
    variables, with |dx/dy| = 1/128 in each of the D dimensions,

        log p_Y(y) = log p_X(x) + D log(1/128) = log p_X(x) - D log 128.

    Bits per dimension are -log2 P(u) / D, so

        bits/dim <= E_v[-log p_X(x) + D log 128] / (D ln 2) = E_v[-log p_X(x)] / (D ln 2) + 7,

    the same number as the usual [0, 1) convention, -log p(y / 256) / (D ln 2) + 8 (the extra 1 bit is the
    factor 2 between 1/128 and 1/256). One draw of v per image gives an unbiased estimate of this bound;
    it is what training minimises and what `zoo.evaluate --metrics bits_per_dim` reports ("exact" in the
    sense of the flows' literature: no variational bound on p_X itself, only the dequantisation's).
    """
    return (-log_px / num_dims + math.log(PIXEL_LEVELS / 2)) / math.log(2)


def standard_normal_log_prob(eps: Tensor) -> Tensor:
    """log N(eps; 0, I), summed over all but the batch dimension: (B,)."""
    return (-0.5 * (eps**2 + LOG_2PI)).flatten(1).sum(1)


def _per_example(values: Tensor) -> Tensor:
    return values.flatten(1).sum(1)


# --- layers --------------------------------------------------------------------------------------------


class Squeeze(nn.Module):
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2x2 block of pixels becomes 4 channels (a permutation)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = rearrange(x, "b c (h p) (w q) -> b (c p q) h w", p=2, q=2)
        return z, x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return rearrange(z, "b (c p q) h w -> b c (h p) (w q)", p=2, q=2)


class ReverseChannels(nn.Module):
    """The channels in reverse order, so that the next channel coupling transforms the other half."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.flip(1), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return z.flip(1)


class ActNorm(nn.Module):
    """z = (x + bias) * exp(log_scale) per channel (Glow, section 3.1).

    The first forward batch in training mode sets bias and log_scale so that its output has zero mean and unit
    variance per channel (over batch and pixels): a data-dependent initialisation that makes deep flows trainable without
    batch statistics. `initialized` is a buffer, saved in the state dict, so a reloaded model never
    initialises again. Under DDP the statistics are averaged over the ranks, so every rank starts from the
    same parameters (DDP does not broadcast parameters changed after it wrapped the model)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = eps

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        moments = torch.stack([x.mean((0, 2, 3)), (x**2).mean((0, 2, 3))])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(moments)
            moments /= torch.distributed.get_world_size()
        mean, square = moments
        std = (square - mean**2).clamp_min(0).sqrt()
        self.bias.copy_(-mean.reshape(self.bias.shape))
        self.log_scale.copy_(-torch.log(std + self.eps).reshape(self.log_scale.shape))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.initialized and self.training:  # not in eval mode: Lightning's sanity check, sampling
            self.initialize(x)
        z = (x + self.bias) * self.log_scale.exp()
        logdet = self.log_scale.sum() * x.shape[2] * x.shape[3]
        return z, logdet.expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return z * torch.exp(-self.log_scale) - self.bias


class InvConv1x1(nn.Module):
    """Glow's invertible 1x1 convolution, LU-decomposed (section 3.2): W = P L (U + diag(sign * exp(log_s))).

    P (a permutation) and the signs are fixed; L (unit lower triangular), U (strictly upper triangular) and
    log_s are learned. W starts as a random rotation. log |det W| = sum log_s, so a layer's logdet is
    H W sum log_s, without the O(C^3) determinant of an unconstrained W."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        rotation = torch.linalg.qr(torch.randn(channels, channels))[0]
        p, lower, upper = torch.linalg.lu(rotation)
        diagonal = torch.diagonal(upper)
        self.register_buffer("permutation", p)
        self.register_buffer("sign_s", torch.sign(diagonal))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(diagonal.abs().log())

    def weight(self) -> Tensor:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return self.permutation @ lower @ upper

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = F.conv2d(x, self.weight()[:, :, None, None])
        logdet = self.log_s.sum() * x.shape[2] * x.shape[3]
        return z, logdet.expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return F.conv2d(z, torch.linalg.inv(self.weight())[:, :, None, None])


class ZeroConv2d(nn.Conv2d):
    """A 3x3 convolution whose weight and bias start at zero, so that what it parameterises (a coupling's
    shift and scale, a prior's mean and log-scale) starts at its neutral value."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


def coupling_network(in_channels: int, out_channels: int, hidden: int) -> nn.Sequential:
    """Glow's coupling network NN(): conv 3x3, ReLU, conv 1x1, ReLU, zero-initialised conv 3x3."""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(),
        nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
        ZeroConv2d(hidden, out_channels),
    )  # fmt: skip


def checkerboard(height: int, width: int, parity: int, like: Tensor) -> Tensor:
    """(1, 1, H, W): 1 where (row + column) % 2 == parity (the pixels that pass unchanged), else 0."""
    rows = torch.arange(height, device=like.device)[:, None]
    cols = torch.arange(width, device=like.device)[None, :]
    return ((rows + cols) % 2 == parity).to(like.dtype)[None, None]


class Coupling(nn.Module):
    """Additive (NICE) or affine (RealNVP) coupling with a checkerboard or a channel mask.

    With a mask m, the elements x_a = m x pass unchanged and the others become
        additive: z_b = x_b + t(x_a)                       logdet 0
        affine:   z_b = (x_b + t(x_a)) * sigmoid(s(x_a) + 2)  logdet = sum log sigmoid(s + 2)
    `parity` chooses which half is x_a (couplings alternate it, or a permutation between them does).
    The checkerboard network also sees the mask itself as a channel: a passed pixel of value 0 and a hidden
    one look the same otherwise.
    """

    def __init__(
        self, channels: int, hidden: int, kind: str = "affine", mask: str = "channel", parity: int = 0
    ):
        super().__init__()
        if kind not in COUPLINGS or mask not in MASKS:
            raise ValueError(f"coupling {kind!r} / mask {mask!r}: choose {COUPLINGS} and {MASKS}")
        if mask == "channel" and channels < 2:
            raise ValueError("a channel coupling needs at least 2 channels (squeeze first)")
        self.kind, self.mask, self.parity = kind, mask, parity
        outputs = 2 if kind == "affine" else 1
        if mask == "checkerboard":
            self.net = coupling_network(channels + 1, outputs * channels, hidden)
        else:
            self.passed = channels // 2 if parity == 0 else channels - channels // 2
            self.net = coupling_network(self.passed, outputs * (channels - self.passed), hidden)

    def _shift_and_log_scale(self, given: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.net(given)
        if self.kind == "additive":
            return out, None
        shift, raw = out.chunk(2, dim=1)
        return shift, F.logsigmoid(raw + 2.0)  # log sigmoid(s + 2): the bounded scale, stably

    def _halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(given, transformed) channel halves, in the order `_join` puts back."""
        if self.parity == 0:
            return x[:, : self.passed], x[:, self.passed :]
        return x[:, -self.passed :], x[:, : -self.passed]

    def _join(self, given: Tensor, transformed: Tensor) -> Tensor:
        return torch.cat([given, transformed] if self.parity == 0 else [transformed, given], dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.mask == "checkerboard":
            m = checkerboard(x.shape[2], x.shape[3], self.parity, x)
            shift, log_scale = self._shift_and_log_scale(torch.cat([x * m, m.expand_as(x[:, :1])], 1))
            moved = x + shift if log_scale is None else (x + shift) * log_scale.exp()
            logdet = x.new_zeros(x.shape[0]) if log_scale is None else _per_example((1 - m) * log_scale)
            return m * x + (1 - m) * moved, logdet
        given, x_b = self._halves(x)
        shift, log_scale = self._shift_and_log_scale(given)
        if log_scale is None:
            return self._join(given, x_b + shift), x.new_zeros(x.shape[0])
        return self._join(given, (x_b + shift) * log_scale.exp()), _per_example(log_scale)

    def inverse(self, z: Tensor) -> Tensor:
        if self.mask == "checkerboard":
            m = checkerboard(z.shape[2], z.shape[3], self.parity, z)
            shift, log_scale = self._shift_and_log_scale(torch.cat([z * m, m.expand_as(z[:, :1])], 1))
            moved = z - shift if log_scale is None else z * torch.exp(-log_scale) - shift
            return m * z + (1 - m) * moved
        given, z_b = self._halves(z)
        shift, log_scale = self._shift_and_log_scale(given)
        x_b = z_b - shift if log_scale is None else z_b * torch.exp(-log_scale) - shift
        return self._join(given, x_b)


class SplitPrior(nn.Module):
    """Multi-scale factoring-out (RealNVP section 3.6, Glow's split): the last `channels - keep` channels z
    leave the flow, standardised under a learned Gaussian N(mean(h), exp(log_scale(h))^2) conditioned on the
    kept channels h: (h, z) -> (h, eps = (z - mean(h)) / exp(log_scale(h))). Triangular, so
    logdet = -sum log_scale(h); with log N(eps; 0, I) this is exactly log N(z; mean(h), scale(h)^2).
    The convolution starts at zero: the prior starts as N(0, I)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.keep = channels // 2
        self.prior = ZeroConv2d(self.keep, 2 * (channels - self.keep))

    def _standardisation(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_scale = self.prior(kept).chunk(2, dim=1)
        return mean, log_scale

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kept, z = x[:, : self.keep], x[:, self.keep :]
        mean, log_scale = self._standardisation(kept)
        eps = (z - mean) * torch.exp(-log_scale)
        return torch.cat([kept, eps], dim=1), -_per_example(log_scale)

    def inverse(self, z: Tensor) -> Tensor:
        kept, eps = z[:, : self.keep], z[:, self.keep :]
        mean, log_scale = self._standardisation(kept)
        return torch.cat([kept, eps * log_scale.exp() + mean], dim=1)


class TopPrior(nn.Module):
    """The last level's latent h ~ N(mean, exp(log_scale)^2), a learned mean and scale per element (Glow's
    `learntop`; with a single level, NICE's diagonal scaling layer), plus a per-class offset of both when
    `num_classes` > 0 (Glow's class-conditional prior). As a layer: h -> eps = (h - mean) / scale, logdet =
    -sum log_scale.

    Mean and log-scale start at zero (N(0, I) for every class) and are used times `PARAM_SCALE` (3), which
    triples their effective Adam step, as Glow's `logscale_factor` does for its zero-initialised convolutions.
    Why: Adam moves a parameter by about the learning rate a step, and NICE, whose only scaling is this prior,
    needs log-scales of about -4 for a digit's background pixels (measured: at 1e-3, 8.28 bits/dim after 200
    steps without the factor, 7.85 with it; setting them from the first batch's statistics, as ActNorm does,
    made training diverge: the coupling shifts of those nearly constant pixels then cost too much)."""

    PARAM_SCALE = 3.0

    def __init__(self, channels: int, size: int, num_classes: int = 0) -> None:
        super().__init__()
        self.shape = (channels, size, size)
        self.params = nn.Parameter(torch.zeros(1, 2 * channels, size, size))
        self.num_classes = num_classes
        if num_classes > 0:
            self.class_params = nn.Embedding(num_classes, 2 * channels * size * size)
            nn.init.zeros_(self.class_params.weight)

    def mean_and_log_scale(self, batch: int, label: Tensor | None = None) -> tuple[Tensor, Tensor]:
        params = self.params.expand(batch, -1, -1, -1)
        if self.num_classes > 0:
            if label is None:
                raise ValueError("a class-conditional prior needs labels")
            params = params + self.class_params(label).view_as(params)
        mean, log_scale = (params * self.PARAM_SCALE).chunk(2, dim=1)
        return mean, log_scale

    def forward(self, x: Tensor, label: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean, log_scale = self.mean_and_log_scale(x.shape[0], label)
        return (x - mean) * torch.exp(-log_scale), -_per_example(log_scale)

    def inverse(self, eps: Tensor, label: Tensor | None = None) -> Tensor:
        mean, log_scale = self.mean_and_log_scale(eps.shape[0], label)
        return eps * log_scale.exp() + mean


class FlowSequence(nn.ModuleList):
    """Layers applied in order; their log-determinants add up."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self:
            x, layer_logdet = layer(x)
            logdet = logdet + layer_logdet
        return x, logdet

    def inverse(self, z: Tensor) -> Tensor:
        for layer in reversed(self):
            z = layer.inverse(z)
        return z


# --- the multi-scale flow ------------------------------------------------------------------------------


class FlowModel(nn.Module):
    """A multi-scale flow on (C, S, S) images in [-1, 1] with an exact log-likelihood.

    Each of `levels` levels is a `FlowSequence`, followed (except the last) by a `SplitPrior`:
    - layout "realnvp" (RealNVP, section 4.1): `steps` checkerboard couplings, a squeeze, `steps` channel
      couplings, split; the last level `steps + 1` checkerboard couplings. NICE is this layout with additive
      couplings and one level (no squeeze).
    - layout "glow" (Glow, figure 2): a squeeze, then `steps` times [ActNorm, permutation, coupling] with a
      channel mask, split; the last level has no split.
    A step is [ActNorm if `actnorm`] [permutation before a channel coupling: none (alternating halves),
    reverse, conv1x1] [coupling]. `num_classes` > 0 makes the top prior class-conditional.

    The latent is the list of standardised Gaussians eps of every level (`latent_shapes`): `encode` flattens
    them into (B, D), `decode` inverts, `sample` decodes N(0, T^2 I).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        *,
        layout: str = "glow",
        levels: int = 3,
        steps: int = 8,
        hidden: int = 64,
        coupling: str = "affine",
        permutation: str = "conv1x1",
        actnorm: bool = True,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        check_flow_options(in_channels, image_size, layout, levels, steps, coupling, permutation)
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self._options = dict(hidden=hidden, coupling=coupling, permutation=permutation, actnorm=actnorm)
        self.stages, self.splits = nn.ModuleList(), nn.ModuleList()
        self.latent_shapes: list[tuple[int, int, int]] = []
        channels, size = in_channels, image_size
        for level in range(levels):
            last = level == levels - 1
            layers: list[nn.Module] = []
            if layout == "realnvp":
                layers += self._steps(channels, "checkerboard", steps + last)
            if layout == "glow" or not last:
                layers.append(Squeeze())
                channels, size = 4 * channels, size // 2
                layers += self._steps(channels, "channel", steps)
            self.stages.append(FlowSequence(layers))
            if not last:
                split = SplitPrior(channels)
                self.splits.append(split)
                self.latent_shapes.append((channels - split.keep, size, size))
                channels = split.keep
        self.top = TopPrior(channels, size, num_classes)
        self.latent_shapes.append((channels, size, size))

    def _steps(self, channels: int, mask: str, count: int) -> list[nn.Module]:
        o = self._options
        layers: list[nn.Module] = []
        for k in range(count):
            if o["actnorm"]:
                layers.append(ActNorm(channels))
            alternate = mask == "checkerboard" or o["permutation"] == "none"
            if mask == "channel" and o["permutation"] == "reverse":
                layers.append(ReverseChannels())
            elif mask == "channel" and o["permutation"] == "conv1x1":
                layers.append(InvConv1x1(channels))
            layers.append(Coupling(channels, o["hidden"], o["coupling"], mask, k % 2 if alternate else 0))
        return layers

    @property
    def num_dims(self) -> int:
        return self.in_channels * self.image_size**2

    def trunk(self, x: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """Every level but the top prior: (eps that left at each split, the top level's h, logdet so far)."""
        eps, logdet = [], x.new_zeros(x.shape[0])
        for stage, split in zip(self.stages, [*self.splits, None], strict=True):
            x, stage_logdet = stage(x)
            logdet = logdet + stage_logdet
            if split is not None:
                x, split_logdet = split(x)
                logdet = logdet + split_logdet
                eps.append(x[:, split.keep :])
                x = x[:, : split.keep]
        return eps, x, logdet

    def forward(self, x: Tensor, label: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """x -> (eps of every level, log p(x) in nats (B,)) given `label` for a class-conditional prior."""
        eps, h, logdet = self.trunk(x)
        top, top_logdet = self.top(h, label)
        eps.append(top)
        log_px = sum(standard_normal_log_prob(e) for e in eps) + logdet + top_logdet
        return eps, log_px

    def log_prob(self, x: Tensor, label: Tensor | None = None) -> Tensor:
        """log p(x) in nats (B,). A class-conditional model without `label` gives the marginal
        log p(x) = log sum_y p(x | y) / K over uniform classes: one trunk pass, K top-prior evaluations."""
        if self.num_classes == 0 or label is not None:
            return self(x, label)[1]
        eps, h, logdet = self.trunk(x)
        rest = sum((standard_normal_log_prob(e) for e in eps), logdet)
        per_class = []
        for y in range(self.num_classes):
            top, top_logdet = self.top(h, torch.full((len(x),), y, device=x.device, dtype=torch.long))
            per_class.append(standard_normal_log_prob(top) + top_logdet)
        return rest + torch.logsumexp(torch.stack(per_class), 0) - math.log(self.num_classes)

    def encode(self, x: Tensor, label: Tensor | None = None) -> Tensor:
        """The latent code (B, D): every level's eps, flattened and concatenated."""
        return torch.cat([e.flatten(1) for e in self(x, label)[0]], dim=1)

    def decode(self, code: Tensor, label: Tensor | None = None) -> Tensor:
        """x in [-1, 1] (unclamped) of latent codes (B, D), the exact inverse of `encode`."""
        sizes = [math.prod(shape) for shape in self.latent_shapes]
        eps = [
            part.view(-1, *shape)
            for part, shape in zip(code.split(sizes, 1), self.latent_shapes, strict=True)
        ]
        x = self.top.inverse(eps[-1], label)
        for stage, split, leaving in zip(
            reversed(self.stages), [None, *reversed(self.splits)], [None, *reversed(eps[:-1])], strict=True
        ):
            if split is not None:
                x = split.inverse(torch.cat([x, leaving], dim=1))
            x = stage.inverse(x)
        return x

    def sample(
        self,
        n: int,
        *,
        temperature: float = 1.0,
        label: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """`n` draws x in [-1, 1] (unclamped), decoded from eps ~ N(0, temperature^2 I) at every level."""
        device = self.top.params.device
        code = torch.randn((n, self.num_dims), generator=generator, device=device) * temperature
        return self.decode(code, label)


def check_flow_options(
    in_channels: int, image_size: int, layout: str, levels: int, steps: int, coupling: str, permutation: str
) -> None:
    """A ValueError naming the problem for an architecture FlowModel cannot build."""
    for name, value, choices in (("layout", layout, LAYOUTS), ("coupling", coupling, COUPLINGS),
                                 ("permutation", permutation, PERMUTATIONS)):  # fmt: skip
        if value not in choices:
            raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    if levels < 1 or steps < 1:
        raise ValueError(f"levels and steps must be at least 1, got {levels} and {steps}")
    squeezes = levels if layout == "glow" else levels - 1
    if image_size % 2**squeezes:
        raise ValueError(
            f"image_size {image_size} must be divisible by 2**{squeezes}: the {layout} layout squeezes "
            f"{squeezes} time(s) with {levels} level(s)"
        )


def interpolate_codes(a: Tensor, b: Tensor, steps: int) -> Tensor:
    """`steps` codes on the straight line from code a (D,) to code b (D,), both ends included: (steps, D)."""
    weights = torch.linspace(0, 1, steps, device=a.device, dtype=a.dtype)[:, None]
    return (1 - weights) * a + weights * b


def label_means(codes: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class sums of codes (K, D) and counts (K,): the mean latent of a label is sums[k] / counts[k]
    (kept as sums, so that batches and ranks add up)."""
    sums = torch.zeros(num_classes, codes.shape[1], dtype=codes.dtype, device=codes.device)
    sums.index_add_(0, labels, codes)
    counts = torch.bincount(labels, minlength=num_classes).to(codes.dtype)
    return sums, counts


def edit_codes(
    codes: Tensor, means: Tensor, from_label: int, to_label: int, strength: float | Sequence[float]
) -> Tensor:
    """Latent attribute editing (Glow, section 5; the "smile vector"): code + strength * (mean of `to_label`
    - mean of `from_label`). `strength` a list gives one edited code per value (a sweep)."""
    direction = means[to_label] - means[from_label]
    strengths = torch.as_tensor(strength, dtype=codes.dtype, device=codes.device).reshape(-1, 1)
    return codes + strengths * direction
