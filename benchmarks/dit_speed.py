"""Speed of zoo's DiT (`zoo.nn.dit`) against diffusers' `DiTTransformer2DModel`, same config, same weights.

    pip install -e ".[bench]"
    python benchmarks/dit_speed.py [--threads 2] [--repeats 10] [--image-size 16] [--hidden-size 256] [--depth 6]

Both networks: class-conditional (10 classes + the null label), learned σ (in_channels 4 → 8 outputs), a
latent of 16×16×4 in patches of 2 (64 tokens), width 256, 4 heads, depth 6 by default. diffusers' model is
built first; zoo's is ported from it with `from_diffusers_dit`, so the weights are the same (diffusers keeps
one copy of the timestep/label embedders per block, which zoo's DiT, like DiT, holds once; both counts are
printed). Before timing, the outputs are checked to agree (diffusers set to DiT's timestep frequencies).

Measured, alternating zoo and diffusers in one process, after warm-up, medians:
- a training step: ε-MSE on the first half of the output, backward, AdamW;
- sampling: `--sample-steps` Euler steps of a batch of 16 under `torch.no_grad()` (the same loop around
  each network, so the ratio is the network's).
The ratio printed is time zoo / time diffusers: below 1 means zoo is faster (the goal is ≤ 1.0, i.e. a speed
ratio diffusers / zoo ≥ 1.0×).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from zoo.nn.dit import from_diffusers_dit


def diffusers_dit(args: argparse.Namespace) -> torch.nn.Module:
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel(
        num_attention_heads=args.heads,
        attention_head_dim=args.hidden_size // args.heads,
        in_channels=args.channels,
        out_channels=2 * args.channels,
        num_layers=args.depth,
        sample_size=args.image_size,
        patch_size=args.patch_size,
        num_embeds_ada_norm=10,
        norm_eps=1e-6,  # DiT's eps for every LayerNorm (diffusers' default 1e-5 is only for the MLP's)
    )
    with torch.no_grad():
        shared = model.transformer_blocks[0].norm1.emb.state_dict()
        for block in model.transformer_blocks:  # one embedder, as DiT and its conversion to diffusers
            block.norm1.emb.load_state_dict(shared)
            block.norm1.emb.time_proj.downscale_freq_shift = 0  # DiT's frequencies (tests/test_dit.py)
    return model


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def count(m: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f}M"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10, help="timed training steps (sampling: a third)")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--patch-size", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sample-steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    theirs = diffusers_dit(args)
    ours = from_diffusers_dit(theirs)
    size, channels, batch = args.image_size, args.channels, args.batch_size
    x0 = torch.randn(batch, channels, size, size)
    labels = torch.randint(0, 10, (batch,))
    with torch.no_grad():
        t = torch.randint(0, 1000, (batch,)).float()
        gap = (ours.eval()(x0, t, labels) - theirs.eval()(x0, t, labels).sample).abs().max().item()
    print(f"same weights: largest output difference {gap:.1e}")

    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4)

    def training_step(
        net: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer
    ) -> Callable[[], None]:
        def step() -> None:
            t = torch.randint(0, 1000, (batch,)).float()
            noise = torch.randn_like(x0)
            a = (1 - t / 1000)[:, None, None, None]  # any noising will do: the networks are what is timed
            loss = (net(a * x0 + (1 - a) * noise, t, labels)[:, :channels] - noise).square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    n = 16
    sample_labels = torch.arange(n) % 10

    def sampling(net: Callable[..., torch.Tensor]) -> Callable[[], None]:
        @torch.no_grad()
        def run() -> None:
            x = torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(0))
            for k in range(args.sample_steps):
                t = torch.full((n,), 1000.0 * (1 - k / args.sample_steps))
                x = x - net(x, t, sample_labels)[:, :channels] / args.sample_steps

        return run

    def diffusers_call(x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return theirs(x, t, class_labels=label).sample

    jobs = {
        "train_ours": training_step(ours, opt_ours),
        "train_theirs": training_step(diffusers_call, opt_theirs),
        "sample_ours": sampling(ours),
        "sample_theirs": sampling(diffusers_call),
    }
    ours.train(), theirs.train()
    for _ in range(args.warmup):
        jobs["train_ours"](), jobs["train_theirs"]()
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(args.repeats):
        times["train_ours"].append(timed(jobs["train_ours"]))
        times["train_theirs"].append(timed(jobs["train_theirs"]))
    ours.eval(), theirs.eval()
    for _ in range(args.warmup):
        jobs["sample_ours"](), jobs["sample_theirs"]()
    for _ in range(max(3, args.repeats // 3)):
        times["sample_ours"].append(timed(jobs["sample_ours"]))
        times["sample_theirs"].append(timed(jobs["sample_theirs"]))
    med = {name: statistics.median(v) for name, v in times.items()}

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, latent {size}x{size}x{channels}, "
        f"patch {args.patch_size}, width {args.hidden_size}, depth {args.depth}, {args.heads} heads, "
        f"training batch {batch}, sampling batch {n}"
    )
    print()
    print("| measure | zoo DiT | diffusers DiTTransformer2DModel | time zoo/diffusers (<1: zoo faster) |")
    print("|---|---|---|---|")
    print(f"| parameters | {count(ours)} | {count(theirs)} (an embedder copy per block) | |")
    for key, label in (
        ("train", "training step (s)"),
        ("sample", f"{args.sample_steps} sampling steps, batch {n} (s)"),
    ):
        a, b = med[f"{key}_ours"], med[f"{key}_theirs"]
        print(f"| {label} | {a:.4f} | {b:.4f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
