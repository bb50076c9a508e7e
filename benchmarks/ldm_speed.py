"""Speed of zoo's `ldm` latent U-Net against diffusers' UNet2DConditionModel + DPMSolverMultistepScheduler.

    pip install -e ".[bench]"
    python benchmarks/ldm_speed.py [--batch-size 64] [--steps 10]

Both: 8x8x4 latents (32x32 images through the x4 VAE), two ResBlocks a level (zoo widths 64/128;
diffusers 56/112 by default, which gives it about zoo's parameter count),
self- and cross-attention at both levels (diffusers: CrossAttnDownBlock2D/CrossAttnUpBlock2D, one
transformer layer each) over 24 text states of width 128 with a padding mask; zoo also adds the
pooled text embedding to the time embedding (diffusers: `class_embed_type="projection"` does the
same). Parameter counts are printed. Measured, alternating, after warm-up: a training step of the
U-Net alone (ε-prediction MSE, AdamW) and 25-step DPM-Solver++(2M) sampling of a batch of 16 with
classifier-free guidance (one batched call of 32), each library's own sampler loop.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from zoo.diffusion import NoiseSchedule, classifier_free_guidance, q_sample
from zoo.diffusion import sample as zoo_sample
from zoo.nn.unet import UNet

WIDTH, LENGTH = 128, 24


def diffusers_unet(widths: tuple[int, int] = (56, 112)) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=widths,
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=WIDTH,
        attention_head_dim=8,
        norm_num_groups=8,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=WIDTH,
    )


def timed(fn) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(cases: dict, steps: int) -> None:
    """For each case name: (zoo's step, the peer's step), each run once to warm up, then timed alternately
    `steps` times; a markdown row of the two medians and their ratio (>1: zoo faster)."""
    import statistics

    for name, (ours, theirs) in cases.items():
        ours(), theirs()
        times = [(timed(ours), timed(theirs)) for _ in range(steps)]
        a, b = (statistics.median(t[i] for t in times) for i in (0, 1))
        print(f"| {name} | {a:.4f} | {b:.4f} | {b / a:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed repetitions")
    parser.add_argument(
        "--diffusers-widths",
        default="56,112",
        help="diffusers' block widths; 56,112 matches zoo's parameter count (its transformer blocks "
        "have feed-forward layers zoo's attention blocks do not); 64,128 matches the widths",
    )
    args = parser.parse_args()
    from diffusers import DPMSolverMultistepScheduler

    torch.manual_seed(0)
    batch = args.batch_size
    ours = UNet(in_channels=4, base_channels=64, channel_mults=(1, 2), num_res_blocks=2, attention_levels=(0, 1),
                num_heads=4, context_dim=WIDTH, pooled_dim=WIDTH)  # fmt: skip
    theirs = diffusers_unet(tuple(int(w) for w in args.diffusers_widths.split(",")))
    schedule = NoiseSchedule.make("linear", 1000)
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", timestep_spacing="leading",
                                            steps_offset=0)  # fmt: skip
    opt_ours, opt_theirs = torch.optim.AdamW(ours.parameters()), torch.optim.AdamW(theirs.parameters())
    z0 = torch.randn(batch, 4, 8, 8)
    states, pooled = torch.randn(batch, LENGTH, WIDTH), torch.randn(batch, WIDTH)
    mask = torch.arange(LENGTH)[None] < torch.randint(4, 9, (batch, 1))

    def train_ours() -> None:
        t = torch.randint(0, 1000, (batch,))
        noise = torch.randn_like(z0)
        loss = (
            (
                ours(q_sample(z0, t, noise, schedule), t, context=states, context_mask=mask, pooled=pooled)
                - noise
            )
            .pow(2)
            .mean()
        )
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def train_theirs() -> None:
        t = torch.randint(0, 1000, (batch,))
        noise = torch.randn_like(z0)
        out = theirs(scheduler.add_noise(z0, noise, t), t, encoder_hidden_states=states, class_labels=pooled,
                     encoder_attention_mask=mask).sample  # fmt: skip
        loss = (out - noise).pow(2).mean()
        loss.backward()
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)

    n = 16
    cond = {"states": states[:n], "mask": mask[:n], "pooled": pooled[:n]}
    uncond = {"states": states[n : 2 * n], "mask": mask[n : 2 * n], "pooled": pooled[n : 2 * n]}

    @torch.no_grad()
    def sample_ours() -> None:
        denoiser = classifier_free_guidance(
            lambda x, t, c: ours(x, t, context=c["states"], context_mask=c["mask"], pooled=c["pooled"]),
            cond,
            uncond,
            4.0,
        )
        zoo_sample(denoiser, shape=(n, 4, 8, 8), schedule=schedule, sampler="dpmpp_2m", steps=25,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip

    @torch.no_grad()
    def sample_theirs() -> None:
        scheduler.set_timesteps(25)
        x = torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
        for t in scheduler.timesteps:
            out = theirs(torch.cat([x, x]), t, encoder_hidden_states=both["states"], class_labels=both["pooled"],
                         encoder_attention_mask=both["mask"]).sample  # fmt: skip
            u, c = out.chunk(2)
            x = scheduler.step(u + 4.0 * (c - u), t, x).prev_sample

    for _ in range(2):
        train_ours(), train_theirs(), sample_ours(), sample_theirs()
    rows: dict[str, list[float]] = {
        k: [] for k in ("train_ours", "train_theirs", "sample_ours", "sample_theirs")
    }
    for _ in range(args.steps):
        rows["train_ours"].append(timed(train_ours))
        rows["train_theirs"].append(timed(train_theirs))
    for _ in range(max(3, args.steps // 3)):
        rows["sample_ours"].append(timed(sample_ours))
        rows["sample_theirs"].append(timed(sample_theirs))
    med = {k: statistics.median(v) for k, v in rows.items()}

    def count(m: torch.nn.Module) -> str:
        return f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f}M"

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, 8x8x4 latents, training batch {batch}, sampling batch {n}"
    )
    print()
    print(
        "| measure | zoo ldm U-Net | diffusers UNet2DConditionModel | ratio diffusers/zoo (>1: zoo faster) |"
    )
    print("|---|---|---|---|")
    print(f"| parameters | {count(ours)} | {count(theirs)} | |")
    print(
        f"| training step (s) | {med['train_ours']:.4f} | {med['train_theirs']:.4f} | {med['train_theirs'] / med['train_ours']:.2f} |"
    )
    print(f"| DPM-Solver++(2M) 25 steps + CFG, batch {n} (s) | {med['sample_ours']:.3f} | {med['sample_theirs']:.3f} | "
          f"{med['sample_theirs'] / med['sample_ours']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
