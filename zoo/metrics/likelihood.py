"""Likelihood metrics: `bits_per_dim` of the real split under a family's own density model.

    python -m zoo.evaluate --ckpt runs/glow/<run>/checkpoints/last.ckpt --metrics bits_per_dim --split test

The family computes it (`model.bits_per_dim(images, generator=) -> (B,)` for images in [0, 1], read as 8-bit
pixels), so every family reports the negative log-likelihood of the same discrete data, -log2 P(u) / D:
- the flows (`nice`, `realnvp`, `glow`): exact up to the uniform dequantisation's Jensen gap, one
  dequantisation draw per image (zoo.nn.flows.bits_per_dim);
- `vae`: an upper bound, its negative ELBO with the decoder likelihood its training loss implies;
- `ddpm`: an upper bound, the negative ELBO of Ho et al. (2020) over all T steps (zoo.diffusion.elbo_bits_per_dim),
  T network calls per batch.
A class-conditional model reports the marginal (flows: exact over uniform classes; ddpm: its unconditional
network, the null label). The draws come from a generator seeded with `--seed`.
"""

from __future__ import annotations

import torch

from zoo.metrics.registry import MetricContext, register_metric


@register_metric("bits_per_dim", modalities=("image",), needs=("model", "real"), higher_is_better=False)
def bits_per_dim(ctx: MetricContext) -> dict[str, float]:
    """Negative log-likelihood of the real split in bits per dimension (exact for flows; a bound for vae, ddpm)."""
    score = getattr(ctx.model, "bits_per_dim", None)
    if score is None:
        raise ValueError(
            f"bits_per_dim needs a family with a likelihood (nice, realnvp, glow, vae, ddpm); "
            f"got {type(ctx.model).__name__}"
        )
    generator = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
    values = [
        score(ctx.real[start : start + ctx.batch_size].to(ctx.device), generator=generator).double().cpu()
        for start in range(0, len(ctx.real), ctx.batch_size)
    ]
    return {"bits_per_dim": torch.cat(values).mean().item()}
