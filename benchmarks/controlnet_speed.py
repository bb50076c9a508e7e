"""Speed of zoo's ControlNet against diffusers' `ControlNetModel`, each on its own library's U-Net of the
`ldm` benchmark's size (benchmarks/ldm_speed.py: 8x8x4 latents, 24 text states of width 128).

    pip install -e ".[bench]"
    python benchmarks/controlnet_speed.py [--batch-size 64] [--steps 10]

diffusers' ControlNet is `ControlNetModel.from_unet` of `ldm_speed.diffusers_unet()` (widths 56/112, zoo's
parameter count), its conditioning embedding (16, 32, 96) taking 32x32 control images to 8x8 as zoo's does.
Measured, alternating, after warm-up: a training step (the ControlNet's residuals into the frozen U-Net,
eps-MSE, AdamW on the ControlNet alone) and a guided sampling step of a batch of 16 (ControlNet and U-Net
on the doubled batch), against the same U-Net step with no ControlNet: the overhead of control.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from ldm_speed import LENGTH, WIDTH, compare, diffusers_unet  # noqa: E402

from zoo.nn.controlnet import ControlNet  # noqa: E402
from zoo.nn.unet import UNet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed repetitions")
    args = parser.parse_args()
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    batch = args.batch_size
    unet_ours = UNet(in_channels=4, base_channels=64, channel_mults=(1, 2), num_res_blocks=2, attention_levels=(0, 1),
                     num_heads=4, context_dim=WIDTH, pooled_dim=WIDTH).requires_grad_(False)  # fmt: skip
    net_ours = ControlNet(unet_ours, condition_channels=3, downsample_factor=4)
    unet_theirs = diffusers_unet().requires_grad_(False)
    net_theirs = ControlNetModel.from_unet(unet_theirs, conditioning_embedding_out_channels=(16, 32, 96))
    print(f"ControlNet parameters: zoo {sum(p.numel() for p in net_ours.parameters()) / 1e6:.2f}M, "
          f"diffusers {sum(p.numel() for p in net_theirs.parameters()) / 1e6:.2f}M")  # fmt: skip
    opt_ours, opt_theirs = (
        torch.optim.AdamW(net_ours.parameters()),
        torch.optim.AdamW(net_theirs.parameters()),
    )
    x, noise = torch.randn(batch, 4, 8, 8), torch.randn(batch, 4, 8, 8)
    control = torch.rand(batch, 3, 32, 32)
    states, pooled = torch.randn(batch, LENGTH, WIDTH), torch.randn(batch, WIDTH)
    mask = torch.arange(LENGTH)[None] < torch.randint(4, 9, (batch, 1))
    t = torch.randint(0, 1000, (batch,))
    text = {"context": states, "context_mask": mask, "pooled": pooled}

    def ours(n: int, controlled: bool = True) -> torch.Tensor:
        kwargs = {k: v[:n] for k, v in text.items()}
        residuals = net_ours(x[:n], t[:n], control[:n], **kwargs) if controlled else None
        return unet_ours(x[:n], t[:n], control=residuals, **kwargs)

    def theirs(n: int, controlled: bool = True) -> torch.Tensor:
        kwargs = {"encoder_hidden_states": states[:n], "encoder_attention_mask": mask[:n]}
        down = mid = None
        if (
            controlled
        ):  # diffusers' ControlNetModel takes no text padding mask: its cross-attention sees all 24
            down, mid = net_theirs(x[:n], t[:n], encoder_hidden_states=states[:n], controlnet_cond=control[:n],
                                   class_labels=pooled[:n], return_dict=False)  # fmt: skip
        return unet_theirs(x[:n], t[:n], class_labels=pooled[:n], down_block_additional_residuals=down,
                           mid_block_additional_residual=mid, **kwargs).sample  # fmt: skip

    def train(fn, opt) -> None:  # noqa: ANN001
        (fn(batch) - noise).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    cases = {
        "training step, batch 64 (s)": (lambda: train(ours, opt_ours), lambda: train(theirs, opt_theirs)),
        "guided sampling step, batch 16 (x2), with ControlNet (s)": (
            lambda: torch.no_grad()(ours)(32), lambda: torch.no_grad()(theirs)(32)),
        "guided sampling step, batch 16 (x2), U-Net alone (s)": (
            lambda: torch.no_grad()(ours)(32, False), lambda: torch.no_grad()(theirs)(32, False)),
    }  # fmt: skip
    print("| measure | zoo | diffusers | ratio diffusers/zoo (>1: zoo faster) |")
    print("|---|---|---|---|")
    compare(cases, args.steps)


if __name__ == "__main__":
    main()
