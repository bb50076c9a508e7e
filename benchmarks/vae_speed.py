"""Speed of zoo's `vae` against diffusers' AutoencoderKL of the same shape, in one run.

    pip install -e ".[bench]"
    python benchmarks/vae_speed.py [--batch-size 32] [--steps 20] [--device cpu]

Both autoencoders downsample x4 to 4 latent channels with one ResBlock per level, no attention in
the middle block, and nearly the same parameter count (zoo: widths 32/64/128, 0.98M; diffusers:
block_out_channels (32, 64, 64), 0.92M, since diffusers puts more blocks at the widest level);
same loss (L1 + beta * KL), same batches, timed alternately after warm-up. Prints a Markdown table: seconds per training
step and per decode of a batch, and the ratio zoo / diffusers (below 1: zoo is faster).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from zoo.plugins.vae import VAE


def diffusers_vae(channels: int) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        mid_block_add_attention=False,
    )


def kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()


def step_zoo(model: VAE, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
    reconstruction, mean, logvar = model(x)
    loss = (reconstruction - x).abs().mean() + 0.01 * kl(mean, logvar)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def step_diffusers(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
    posterior = model.encode(x).latent_dist
    reconstruction = model.decode(posterior.sample()).sample
    loss = (reconstruction - x).abs().mean() + 0.01 * kl(posterior.mean, posterior.logvar)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)

    ours = VAE(base_channels=32, latent_channels=4, downsample_factor=4).to(device)
    theirs = diffusers_vae(3).to(device)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4)
    x = torch.rand(args.batch_size, 3, 32, 32, device=device) * 2 - 1
    z = torch.randn(args.batch_size, 4, 8, 8, device=device)

    for _ in range(3):  # warm-up
        step_zoo(ours, opt_ours, x)
        step_diffusers(theirs, opt_theirs, x)
    train_ours, train_theirs, dec_ours, dec_theirs = [], [], [], []
    for _ in range(args.steps):  # alternate, so both see the same machine load
        train_ours.append(timed(step_zoo, ours, opt_ours, x))
        train_theirs.append(timed(step_diffusers, theirs, opt_theirs, x))
        with torch.no_grad():
            dec_ours.append(timed(ours.decode, z))
            dec_theirs.append(timed(lambda z: theirs.decode(z).sample, z))

    def count(m: torch.nn.Module) -> str:
        return f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f}M"

    med = statistics.median
    print(f"device: {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}, batch {args.batch_size} of 32x32x3, median of {args.steps}")  # fmt: skip
    print()
    print("| measure | zoo vae | diffusers AutoencoderKL | ratio zoo/diffusers |")
    print("|---|---|---|---|")
    print(f"| parameters | {count(ours)} | {count(theirs)} | |")
    print(
        f"| training step (s) | {med(train_ours):.4f} | {med(train_theirs):.4f} | {med(train_ours) / med(train_theirs):.2f} |"
    )
    print(
        f"| decode a batch (s) | {med(dec_ours):.4f} | {med(dec_theirs):.4f} | {med(dec_ours) / med(dec_theirs):.2f} |"
    )


if __name__ == "__main__":
    main()
