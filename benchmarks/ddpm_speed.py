"""Speed of zoo's `ddpm` against diffusers' UNet2DModel + DDIMScheduler, in one run.

    pip install -e ".[bench]"
    python benchmarks/ddpm_speed.py [--image-size 16] [--batch-size 64] [--steps 10]

Both networks: class-conditional (11 class embeddings: 10 digits + the null label), one channel,
widths 32/64/64 (diffusers) vs 32/64/64 (zoo: base 32, channel_mults (1, 2, 2)), one ResBlock per
level, attention at the lowest resolution; the parameter counts are printed. Measured, alternating,
after warm-up: a training step (noise-prediction MSE, AdamW), and 50-step DDIM sampling of a batch
of 16 (each library's own sampler loop). Also: zoo's sampler overhead, the time of `sample()` over
the time of the same number of bare network calls.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from zoo.diffusion import NoiseSchedule, q_sample
from zoo.diffusion import sample as zoo_sample
from zoo.nn.unet import UNet


def diffusers_unet(size: int) -> torch.nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=size,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=16,
        num_class_embeds=11,
    )


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed repetitions")
    args = parser.parse_args()
    from diffusers import DDIMScheduler

    torch.manual_seed(0)
    size, batch = args.image_size, args.batch_size
    ours = UNet(
        in_channels=1,
        base_channels=32,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        attention_levels=(2,),
        num_classes=10,
    )
    theirs = diffusers_unet(size)
    schedule = NoiseSchedule.make("linear", 1000)
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        clip_sample=False,
        timestep_spacing="leading",
        steps_offset=1,
    )
    opt_ours, opt_theirs = torch.optim.AdamW(ours.parameters()), torch.optim.AdamW(theirs.parameters())
    x0 = torch.rand(batch, 1, size, size) * 2 - 1
    labels = torch.randint(0, 10, (batch,))

    def train_ours() -> None:
        t = torch.randint(0, 1000, (batch,))
        noise = torch.randn_like(x0)
        loss = (ours(q_sample(x0, t, noise, schedule), t, labels) - noise).pow(2).mean()
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def train_theirs() -> None:
        t = torch.randint(0, 1000, (batch,))
        noise = torch.randn_like(x0)
        x_t = scheduler.add_noise(x0, noise, t)
        loss = (theirs(x_t, t, class_labels=labels).sample - noise).pow(2).mean()
        loss.backward()
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)

    n = 16
    sample_labels = torch.arange(n) % 10

    @torch.no_grad()
    def sample_ours() -> None:
        zoo_sample(lambda x, t: ours(x, t, sample_labels), shape=(n, 1, size, size), schedule=schedule, sampler="ddim", steps=50,
                   generator=torch.Generator().manual_seed(0), spacing="leading")  # fmt: skip

    @torch.no_grad()
    def sample_theirs() -> None:
        scheduler.set_timesteps(50)
        x = torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(0))
        for t in scheduler.timesteps:
            x = scheduler.step(theirs(x, t, class_labels=sample_labels).sample, t, x).prev_sample

    @torch.no_grad()
    def bare_ours() -> None:
        x = torch.randn(n, 1, size, size)
        for t in range(980, -1, -20):
            ours(x, torch.full((n,), float(t)), sample_labels)

    for _ in range(2):
        train_ours(), train_theirs(), sample_ours(), sample_theirs(), bare_ours()
    rows: dict[str, list[float]] = {
        k: [] for k in ("train_ours", "train_theirs", "sample_ours", "sample_theirs", "bare_ours")
    }
    for _ in range(args.steps):
        rows["train_ours"].append(timed(train_ours))
        rows["train_theirs"].append(timed(train_theirs))
    for _ in range(max(3, args.steps // 3)):
        rows["sample_ours"].append(timed(sample_ours))
        rows["sample_theirs"].append(timed(sample_theirs))
        rows["bare_ours"].append(timed(bare_ours))
    med = {k: statistics.median(v) for k, v in rows.items()}

    def count(m: torch.nn.Module) -> str:
        return f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f}M"

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {size}x{size}x1, training batch {batch}, sampling batch {n}"
    )
    print()
    print(
        "| measure | zoo ddpm | diffusers UNet2DModel + DDIMScheduler | ratio diffusers/zoo (>1: zoo faster) |"
    )
    print("|---|---|---|---|")
    print(f"| parameters | {count(ours)} | {count(theirs)} | |")
    print(
        f"| training step (s) | {med['train_ours']:.4f} | {med['train_theirs']:.4f} | {med['train_theirs'] / med['train_ours']:.2f} |"
    )
    print(
        f"| DDIM 50 steps, batch {n} (s) | {med['sample_ours']:.3f} | {med['sample_theirs']:.3f} | {med['sample_theirs'] / med['sample_ours']:.2f} |"
    )
    overhead = med["sample_ours"] / med["bare_ours"] - 1
    print(f"| zoo sampler overhead over 50 bare network calls | {100 * overhead:.1f}% | | |")


if __name__ == "__main__":
    main()
