"""Model-agnostic pieces of adversarial training: objectives, penalties and differentiable augmentation.

Nothing here knows what a generator or a discriminator looks like: losses take the
discriminator's raw outputs (logits / critic values, any shape), penalties take a callable and
tensors, augmentation takes a batch of images. The GAN families (`zoo.plugins.gan`,
`zoo.plugins.stylegan`) use them, and so can an audio vocoder (LSGAN + feature matching, as in
HiFi-GAN / MelGAN).

Objectives (`OBJECTIVES`), written as (discriminator loss, generator loss):

- `nonsaturating` (Goodfellow et al. 2014, the -log D trick for G): D: softplus(-r) + softplus(f);
  G: softplus(-f). `real_label` < 1 is one-sided label smoothing (Salimans et al. 2016).
- `lsgan` (Mao et al. 2017, a=0, b=c=1): D: ((r - 1)^2 + f^2) / 2; G: (f - 1)^2 / 2.
- `wgan` / `wgan_gp` (Arjovsky et al. 2017; Gulrajani et al. 2017): D: f - r; G: -f. The
  gradient penalty is separate (`gradient_penalty`).
- `hinge` (Lim & Ye 2017; Miyato et al. 2018): D: relu(1 - r) + relu(1 + f); G: -f.

All losses are means over every element, so a multi-scale / multi-period discriminator can pass
its outputs one by one and sum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

OBJECTIVES = ("nonsaturating", "lsgan", "wgan_gp", "hinge")


def check_objective(objective: str) -> str:
    if objective == "wgan":
        return "wgan_gp"
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown GAN objective '{objective}'; choose one of {', '.join(OBJECTIVES)}")
    return objective


def discriminator_loss(
    objective: str, real: torch.Tensor, fake: torch.Tensor, real_label: float = 1.0
) -> torch.Tensor:
    """The discriminator's (critic's) loss on its outputs for real and generated samples.

    `real_label` (one-sided label smoothing) applies to `nonsaturating` (target probability) and
    `lsgan` (target value b); the other objectives have no labels and ignore it.
    """
    objective = check_objective(objective)
    if objective == "nonsaturating":
        # BCE with target real_label on reals, 0 on fakes; softplus(-x) = -log sigmoid(x)
        real_term = real_label * F.softplus(-real) + (1 - real_label) * F.softplus(real)
        return real_term.mean() + F.softplus(fake).mean()
    if objective == "lsgan":
        return 0.5 * ((real - real_label) ** 2).mean() + 0.5 * (fake**2).mean()
    if objective == "wgan_gp":
        return fake.mean() - real.mean()
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()  # hinge


def generator_loss(objective: str, fake: torch.Tensor) -> torch.Tensor:
    """The generator's loss on the discriminator's outputs for its samples."""
    objective = check_objective(objective)
    if objective == "nonsaturating":
        return F.softplus(-fake).mean()
    if objective == "lsgan":
        return 0.5 * ((fake - 1) ** 2).mean()
    return -fake.mean()  # wgan_gp and hinge


def feature_matching_loss(
    real_features: Sequence[torch.Tensor], fake_features: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Mean L1 distance between the discriminator's intermediate features for real and generated
    samples, summed over layers (Larsen et al. 2016; MelGAN / HiFi-GAN). Real features are targets."""
    if len(real_features) != len(fake_features):
        raise ValueError(f"got {len(real_features)} real and {len(fake_features)} fake feature maps")
    terms = [(r.detach() - f).abs().mean() for r, f in zip(real_features, fake_features, strict=True)]
    return torch.stack(terms).sum()


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    eps: torch.Tensor | None = None,
    target: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP's penalty E[(||grad_x critic(x_hat)||_2 - target)^2] at x_hat = eps * real + (1 - eps) * fake,
    eps ~ U[0, 1] per sample (Gulrajani et al. 2017, Algorithm 1). Multiply by lambda (10) outside.

    The graph is kept (`create_graph`), so the penalty's gradient reaches the critic's weights.
    """
    if eps is None:
        eps = torch.rand(
            (real.shape[0],) + (1,) * (real.dim() - 1),
            device=real.device,
            dtype=real.dtype,
            generator=generator,
        )
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    norm = grad.flatten(1).norm(2, dim=1)
    return ((norm - target) ** 2).mean()


def r1_penalty(
    discriminator: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """R1 (Mescheder et al. 2018): E[||grad_x D(x)||^2] on real samples; returns (penalty, D(real)).
    Multiply by gamma / 2 outside. D(real) is returned so the caller need not run D twice."""
    x = real.detach().requires_grad_(True)
    out = discriminator(x)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean(), out


# --- DiffAugment (Zhao et al. 2020) -----------------------------------------------------------
# The same random transformation family is applied to real and fake images before D, and it is
# differentiable, so G's gradient passes through it: D sees more varied data without G learning to
# produce augmented images. Randomness comes from `generator` (or the global generator in
# training, which the zoo saves in checkpoints, so resumption stays exact).

DIFF_AUGMENT_POLICIES = ("color", "translation", "cutout")


def _rand(shape: tuple[int, ...], x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, device=x.device, dtype=x.dtype, generator=generator)


def _color(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    b = x.shape[0]
    x = x + (_rand((b, 1, 1, 1), x, generator) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand((b, 1, 1, 1), x, generator) * 2) + mean  # saturation (a no-op on grey)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand((b, 1, 1, 1), x, generator) + 0.5) + mean  # contrast


def _translation(x: torch.Tensor, generator: torch.Generator | None, ratio: float = 0.125) -> torch.Tensor:
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device, generator=generator)
    dx = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device, generator=generator)
    gy, gx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    # shift by gathering from a zero-padded copy: index (y + dy, x + dx) + 1, clamped into the padding
    iy = (gy.unsqueeze(0) + dy + 1).clamp(0, h + 1)
    ix = (gx.unsqueeze(0) + dx + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, iy, ix].permute(0, 3, 1, 2).contiguous()


def _cutout(x: torch.Tensor, generator: torch.Generator | None, ratio: float = 0.5) -> torch.Tensor:
    # zero a (ratio*H) x (ratio*W) square at a random place, inside the image
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    y0 = torch.randint(0, h - ch + 1, (b, 1, 1), device=x.device, generator=generator)
    x0 = torch.randint(0, w - cw + 1, (b, 1, 1), device=x.device, generator=generator)
    gy = torch.arange(h, device=x.device).view(1, h, 1)
    gx = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (gy >= y0) & (gy < y0 + ch) & (gx >= x0) & (gx < x0 + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def diff_augment(
    x: torch.Tensor,
    policy: str | Sequence[str] = "color,translation,cutout",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DiffAugment: random, differentiable colour / translation / cutout of a batch (B, C, H, W),
    with a new draw per sample. `policy` is a comma-separated subset of `DIFF_AUGMENT_POLICIES`;
    an empty policy returns `x` unchanged."""
    names = [p.strip() for p in policy.split(",")] if isinstance(policy, str) else list(policy)
    for name in filter(None, names):
        if name == "color":
            x = _color(x, generator)
        elif name == "translation":
            x = _translation(x, generator)
        elif name == "cutout":
            x = _cutout(x, generator)
        else:
            raise ValueError(
                f"unknown DiffAugment policy '{name}'; choose from {', '.join(DIFF_AUGMENT_POLICIES)}"
            )
    return x
