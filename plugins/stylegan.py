"""`stylegan`: a StyleGAN2-style generator (Karras et al. 2019, 2020), scaled down for a CPU.

Generator:
- a mapping network z -> w (pixel-normalised z, an MLP with a 100x lower learning rate, as in the
  paper); with `num_classes` > 0 a normalised class embedding is concatenated to z (StyleGAN2-ADA's
  conditioning);
- a synthesis network from a learned constant 4x4 input: per resolution, (bilinear 2x upsampling,)
  modulated 3x3 convolutions with weight demodulation, per-layer noise inputs with learned
  strengths, and a skip-architecture `to_rgb` (a modulated 1x1 convolution without demodulation)
  whose outputs are upsampled and summed;
- one w per layer (`num_ws` = convolutions + 1; a `to_rgb` shares the w of the next convolution, as
  in StyleGAN2), so coarse layers (low resolution: pose, shape) and fine layers (stroke, texture)
  can take different w's: **style mixing regularisation** trains G with two w's crossing over at a
  random layer (`style_mixing`, probability per batch), and `mix_styles` exposes the mechanism;
- the **truncation trick**: `w_avg` tracks the mean w during training (an EMA, `w_avg_beta`) and
  sampling uses w' = w_avg + psi (w - w_avg) (`--truncation 0.7`; psi = 0 gives the mean-w image).

Discriminator: residual blocks of equalised-learning-rate convolutions with average pooling, a
minibatch standard-deviation feature at 4x4, a linear head, and the projection term when
class-conditional. Objective: the non-saturating logistic loss with lazy R1 regularisation
(`r1_weight` = gamma, every `r1_every` batches); path-length regularisation is not implemented.
DiffAugment, TTUR and the EMA callback work as in the `gan` families: both take their training loop
from `zoo.gan.GANModule` (manual optimisation; `max_steps` counts D and G steps, see there).

    python -m zoo.fit --model stylegan
    python -m zoo.sample --ckpt runs/stylegan/<run>/checkpoints/last.ckpt --truncation 0.7 --label 3
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.gan import GANModule, doublings_from_4x4
from zoo.module import inference

NOISE_MODES = ("random", "const", "none")


class EqualLinear(nn.Module):
    """A linear layer with the equalised learning rate (weights stored N(0, 1) / lr_mul, scaled at
    run time by lr_mul / sqrt(fan_in)), so Adam's step is the same relative size for every layer."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        act: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul))
        self.scale = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return F.leaky_relu(x, 0.2) * math.sqrt(2) if self.act else x


class EqualConv2d(nn.Module):
    """A convolution with the equalised learning rate (see EqualLinear)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class MappingNetwork(nn.Module):
    """z (and a class) -> w: pixel norm, then `layers` equalised linear layers with lr_mul 0.01."""

    def __init__(
        self, z_dim: int, w_dim: int, layers: int, num_classes: int = 0, lr_mul: float = 0.01
    ) -> None:
        super().__init__()
        self.embed = EqualLinear(num_classes, w_dim) if num_classes > 0 else None
        self.num_classes = num_classes
        dims = [z_dim + (w_dim if num_classes > 0 else 0)] + [w_dim] * layers
        self.net = nn.Sequential(
            *(EqualLinear(a, b, lr_mul=lr_mul, act=True) for a, b in zip(dims[:-1], dims[1:], strict=True))
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = _normalize(z)
        if self.embed is not None:
            if labels is None:
                raise ValueError("a class-conditional mapping network needs labels")
            y = self.embed(F.one_hot(labels, self.num_classes).to(z.dtype))
            x = torch.cat([x, _normalize(y)], dim=1)
        return self.net(x)


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution: per-sample input-channel scales s = affine(w) (bias 1), and
    demodulation w''_oik = s_i w_oik / sqrt(sum_ik (s_i w_oik)^2 + eps).

    Computed as StyleGAN2's non-fused path: scale the activations by s, convolve with the shared
    weight, scale the outputs by the demodulation coefficients. That equals convolving with the
    per-sample weights w'' (a test checks it against the grouped convolution) and is faster on a CPU
    than the grouped form, most at the low resolutions (benchmarks/kernel_choices.py, RESULTS.md).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, w_dim: int, demodulate: bool = True
    ) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.demodulate = demodulate
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)  # (B, in)
        weight = self.weight * self.scale
        out = F.conv2d(x * styles[:, :, None, None], weight, padding=self.padding)
        if self.demodulate:
            # sum_ik (s_i w_oik)^2 = (s^2) @ (sum_k w_oik^2)^T, for every sample and output channel
            coefficients = torch.rsqrt(styles.pow(2) @ weight.pow(2).sum(dim=(2, 3)).t() + 1e-8)
            out = out * coefficients[:, :, None, None]
        return out

    def grouped_forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The same operation with explicit per-sample weights (the fused path), for reference."""
        b, cin, h, wd = x.shape
        weight = self.weight.unsqueeze(0) * self.scale * self.affine(w)[:, None, :, None, None]
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        out = F.conv2d(x.reshape(1, b * cin, h, wd), weight.flatten(0, 1), padding=self.padding, groups=b)
        return out.view(b, -1, h, wd)


class StyleLayer(nn.Module):
    """(2x upsample,) modulated 3x3 conv, + strength * per-pixel noise, + bias, leaky ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, resolution: int, upsample: bool
    ) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim)
        self.noise_strength = nn.Parameter(torch.zeros([]))  # StyleGAN starts without noise
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.resolution = resolution
        # fixed noise for deterministic sampling (noise_mode="const")
        self.register_buffer(
            "noise_const",
            torch.randn(1, 1, resolution, resolution, generator=torch.Generator().manual_seed(resolution)),
        )

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: str = "random",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.conv(x, w)
        if noise_mode == "random":
            device = generator.device if generator is not None else x.device
            noise = torch.randn(
                len(x), 1, self.resolution, self.resolution, generator=generator, device=device
            )
            x = x + self.noise_strength * noise.to(x.device)
        elif noise_mode == "const":
            x = x + self.noise_strength * self.noise_const
        return F.leaky_relu(x + self.bias[None, :, None, None], 0.2) * math.sqrt(2)


class ToRGB(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias[None, :, None, None]


class SynthesisNetwork(nn.Module):
    """Constant 4x4 input -> per resolution 4, 8, ..., image_size: style layers and a skip to_rgb.

    w indices (StyleGAN2's): at 4x4 conv 0 and to_rgb 1; at each later resolution two convs
    (i, i+1) and to_rgb (i+2), where i is the previous to_rgb's index. So `num_ws` = convs + 1, the
    first indices steer the coarse resolutions and the last the fine ones.
    """

    def __init__(
        self, w_dim: int, out_channels: int, image_size: int, channels: int, max_channels: int
    ) -> None:
        super().__init__()
        levels = doublings_from_4x4(image_size)
        width = lambda res: min(max_channels, channels * image_size // res)  # noqa: E731 - channels per resolution
        self.const = nn.Parameter(torch.randn(1, width(4), 4, 4))
        self.resolutions = [4 * 2**i for i in range(levels + 1)]
        self.blocks = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for res in self.resolutions:
            if res == 4:
                layers = [StyleLayer(width(4), width(4), w_dim, 4, upsample=False)]
            else:
                layers = [
                    StyleLayer(width(res // 2), width(res), w_dim, res, upsample=True),
                    StyleLayer(width(res), width(res), w_dim, res, upsample=False),
                ]
            self.blocks.append(nn.ModuleList(layers))
            self.to_rgbs.append(ToRGB(width(res), out_channels, w_dim))
        self.num_ws = sum(len(b) for b in self.blocks) + 1

    def forward(
        self,
        ws: torch.Tensor,
        noise_mode: str = "random",
        generator: torch.Generator | None = None,
        return_features: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        if ws.shape[1] != self.num_ws:
            raise ValueError(f"expected {self.num_ws} w's per sample, got {ws.shape[1]}")
        x = self.const.expand(len(ws), -1, -1, -1)
        rgb = None
        features = []
        index = 0
        for layers, to_rgb in zip(self.blocks, self.to_rgbs, strict=True):
            for layer in layers:
                x = layer(x, ws[:, index], noise_mode, generator)
                index += 1
            features.append(x)
            y = to_rgb(x, ws[:, index])
            rgb = (
                y
                if rgb is None
                else F.interpolate(rgb, scale_factor=2, mode="bilinear", align_corners=False) + y
            )
        return (rgb, features) if return_features else rgb


def mix_styles(w_coarse: torch.Tensor, w_fine: torch.Tensor, num_ws: int, crossover: int) -> torch.Tensor:
    """Per-layer w's (B, num_ws, w_dim): `w_coarse` for layers [0, crossover), `w_fine` from there on."""
    ws = w_coarse.unsqueeze(1).repeat(1, num_ws, 1)
    ws[:, crossover:] = w_fine.unsqueeze(1)
    return ws


class StyleGenerator(nn.Module):
    """Mapping + synthesis, the tracked mean w, style mixing in training, truncation at sampling."""

    def __init__(
        self,
        z_dim: int,
        w_dim: int,
        mapping_layers: int,
        out_channels: int,
        image_size: int,
        channels: int,
        max_channels: int,
        num_classes: int = 0,
        style_mixing: float = 0.9,
        w_avg_beta: float = 0.995,
    ) -> None:
        super().__init__()
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers, num_classes)
        self.synthesis = SynthesisNetwork(w_dim, out_channels, image_size, channels, max_channels)
        self.num_ws = self.synthesis.num_ws
        self.style_mixing = style_mixing
        self.w_avg_beta = w_avg_beta
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def ws(
        self, z: torch.Tensor, labels: torch.Tensor | None = None, truncation: float = 1.0
    ) -> torch.Tensor:
        w = self.mapping(z, labels)
        if self.training:  # track the mean w for the truncation trick
            self.w_avg.copy_(w.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if truncation != 1.0:
            w = self.w_avg.lerp(w, truncation)
        return w

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Training forward: with probability `style_mixing` per batch, a second z's w takes over the
        layers from a random crossover on (style mixing regularisation). Draws from the global RNG."""
        w = self.ws(z, labels)
        if self.training and self.style_mixing > 0 and torch.rand([]).item() < self.style_mixing:
            crossover = int(torch.randint(1, self.num_ws, []).item())
            w2 = self.ws(torch.randn_like(z), labels)
            ws = mix_styles(w, w2, self.num_ws, crossover)
        else:
            ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        return self.synthesis(ws)


class MinibatchStd(nn.Module):
    """Appends the mean standard deviation over groups of samples as a feature (Karras et al. 2018)."""

    def __init__(self, group_size: int = 4) -> None:
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = min(self.group_size, b)
        while b % g:
            g -= 1
        y = x.view(g, b // g, c, h, w)
        y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (b // g,)
        y = y.view(1, b // g, 1, 1, 1).expand(g, -1, 1, h, w).reshape(b, 1, h, w)
        return torch.cat([x, y], dim=1)


class DBlock(nn.Module):
    """Residual: two 3x3 convs + 2x average pooling, plus a pooled 1x1 skip, summed / sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = EqualConv2d(in_channels, in_channels, 3)
        self.conv2 = EqualConv2d(in_channels, out_channels, 3)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.conv1(x), 0.2) * math.sqrt(2)
        y = F.avg_pool2d(F.leaky_relu(self.conv2(y), 0.2) * math.sqrt(2), 2)
        return (y + F.avg_pool2d(self.skip(x), 2)) / math.sqrt(2)


class StyleDiscriminator(nn.Module):
    """from_rgb 1x1, residual blocks down to 4x4, minibatch std, conv, linear features h, then
    linear(h) + <embed(y), h> (projection) when class-conditional."""

    def __init__(
        self, in_channels: int, image_size: int, channels: int, max_channels: int, num_classes: int = 0
    ) -> None:
        super().__init__()
        width = lambda res: min(max_channels, channels * image_size // res)  # noqa: E731
        self.from_rgb = EqualConv2d(in_channels, width(image_size), 1)
        blocks = []
        res = image_size
        while res > 4:
            blocks.append(DBlock(width(res), width(res // 2)))
            res //= 2
        self.blocks = nn.Sequential(*blocks)
        self.mbstd = MinibatchStd()
        self.conv = EqualConv2d(width(4) + 1, width(4), 3)
        self.fc = EqualLinear(width(4) * 16, width(4), act=True)
        self.head = EqualLinear(width(4), 1)
        self.embed = EqualLinear(num_classes, width(4)) if num_classes > 0 else None
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = F.leaky_relu(self.from_rgb(x), 0.2) * math.sqrt(2)
        x = self.mbstd(self.blocks(x))
        h = self.fc((F.leaky_relu(self.conv(x), 0.2) * math.sqrt(2)).flatten(1))
        out = self.head(h).squeeze(1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("a class-conditional discriminator needs labels")
            y = self.embed(F.one_hot(labels, self.num_classes).to(h.dtype))
            out = out + (y * h).sum(1) / math.sqrt(h.shape[1])
        return out


class StyleGAN(GANModule):
    """StyleGAN2-style generator and residual discriminator; see the module docstring. Training,
    validation, labels and the divergence check are `zoo.gan.GANModule`'s, as are the other training
    options (`**training`); the ones named here take StyleGAN2's values: Adam at 2e-3 with betas
    (0, 0.99) and lazy R1 with gamma 0.1 every 4 batches (Karras et al. 2020, scaled to this size).

    Args:
        in_channels: image channels (1 grey, 3 RGB); zoo.fit links it to data.channels.
        image_size: image side in pixels, a power of two >= 8; zoo.fit links it to data.image_size.
        w_dim: size of the intermediate latent w (and of the class embedding when conditional).
        mapping_layers: equalised linear layers of the mapping network z -> w (at 0.01x the learning rate).
        g_channels: G's width at full resolution, doubled at each level down to 4x4, at most max_channels.
        d_channels: D's width at full resolution, doubled at each level down to 4x4, at most max_channels.
        max_channels: the most channels of any G or D layer.
        style_mixing: probability per training batch that a second z's w takes over from a random layer on; 0: off.
        w_avg_beta: decay of the moving average of w (the truncation trick's centre), updated at each mapping in training.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 16,
        num_classes: int = 0,
        class_conditional: bool = True,
        latent_dim: int = 64,
        w_dim: int = 64,
        mapping_layers: int = 4,
        g_channels: int = 16,
        d_channels: int = 16,
        max_channels: int = 64,
        style_mixing: float = 0.9,
        w_avg_beta: float = 0.995,
        lr_g: float = 2e-3,
        lr_d: float = 2e-3,
        betas: tuple[float, float] = (0.0, 0.99),
        r1_weight: float = 0.1,
        r1_every: int = 4,
        **training: Any,
    ) -> None:
        super().__init__(
            num_classes=num_classes, class_conditional=class_conditional, latent_dim=latent_dim,
            lr_g=lr_g, lr_d=lr_d, betas=betas, r1_weight=r1_weight, r1_every=r1_every, **training,
        )  # fmt: skip
        self.generator = StyleGenerator(
            latent_dim, w_dim, mapping_layers, in_channels, image_size, g_channels, max_channels,
            self.label_classes, style_mixing, w_avg_beta,
        )  # fmt: skip
        self.discriminator = StyleDiscriminator(
            in_channels, image_size, d_channels, max_channels, self.label_classes
        )

    @inference
    def generate(
        self,
        n: int,
        *,
        condition: Any = None,
        generator: torch.Generator | None = None,
        truncation: float | None = None,
        noise_mode: str = "random",
    ) -> torch.Tensor:
        """`n` images in [0, 1]. `truncation` psi: w' = w_avg + psi (w - w_avg) (1 = none, 0 = the
        mean-w image). `noise_mode`: "random" per-layer noise (from `generator`), "const" (fixed
        noise maps, deterministic given w) or "none"."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"unknown noise_mode '{noise_mode}'; choose one of {', '.join(NOISE_MODES)}")
        psi = self.hparams.truncation if truncation is None else truncation
        z = self._latents(n, generator)
        labels = self._labels(condition, n, generator)
        g = self.generator
        ws = g.ws(z, labels, truncation=psi).unsqueeze(1).repeat(1, g.num_ws, 1)
        images = g.synthesis(ws, noise_mode=noise_mode, generator=generator)
        return ((images + 1) / 2).clamp(0, 1)
