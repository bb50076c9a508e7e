"""Speed of zoo's LoRA (peft layers injected into zoo's U-Net, `zoo.customize`) against diffusers' own LoRA
path (`UNet2DConditionModel.add_adapter(LoraConfig)`, the one `train_dreambooth_lora.py` uses), each on its
library's U-Net of the `ldm` benchmark's size (benchmarks/ldm_speed.py: 8x8x4 latents, 24 text states of
width 128). Both adapt the attention layers at rank 4: zoo's `qkv`, `q`, `kv`, `out` (UNET_TARGETS),
diffusers' `to_q`, `to_k`, `to_v`, `to_out.0`.

    pip install -e ".[bench]"
    python benchmarks/customize_speed.py [--batch-size 28] [--steps 10]

Measured, alternating, after warm-up: a training step of the LoRA alone (eps-MSE, AdamW), a guided
sampling step of 16 images (x2) with the LoRA unmerged, merged into the weights, and the U-Net with none.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from ldm_speed import LENGTH, WIDTH, compare, diffusers_unet  # noqa: E402

from zoo.customize import UNET_TARGETS, add_lora, lora_config, merge_lora, unmerge_lora  # noqa: E402
from zoo.nn.unet import UNet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=28, help="the recipes' batch: 7 images x 4 repeats")
    parser.add_argument("--steps", type=int, default=10, help="timed repetitions")
    args = parser.parse_args()
    from peft import LoraConfig

    torch.manual_seed(0)
    ours = UNet(in_channels=4, base_channels=64, channel_mults=(1, 2), num_res_blocks=2, attention_levels=(0, 1),
                num_heads=4, context_dim=WIDTH, pooled_dim=WIDTH).requires_grad_(False)  # fmt: skip
    add_lora(ours, lora_config(4, 4.0, 0.0, UNET_TARGETS))
    theirs = diffusers_unet().requires_grad_(False)
    theirs.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    trainable = [[p for p in m.parameters() if p.requires_grad] for m in (ours, theirs)]
    print(
        f"LoRA parameters: zoo {sum(p.numel() for p in trainable[0]):,}, diffusers {sum(p.numel() for p in trainable[1]):,}"
    )
    opts = [torch.optim.AdamW(params, 1e-3) for params in trainable]
    batch = args.batch_size
    x, noise = torch.randn(batch, 4, 8, 8), torch.randn(batch, 4, 8, 8)
    states, pooled = torch.randn(batch, LENGTH, WIDTH), torch.randn(batch, WIDTH)
    mask = torch.arange(LENGTH)[None] < torch.randint(4, 9, (batch, 1))
    t = torch.randint(0, 1000, (batch,))

    def run_ours(n: int) -> torch.Tensor:
        return ours(x[:n], t[:n], context=states[:n], context_mask=mask[:n], pooled=pooled[:n])

    def run_theirs(n: int) -> torch.Tensor:
        return theirs(x[:n], t[:n], encoder_hidden_states=states[:n], encoder_attention_mask=mask[:n],
                      class_labels=pooled[:n]).sample  # fmt: skip

    def train(fn, opt) -> None:  # noqa: ANN001
        (fn(batch) - noise).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sample(fn):  # noqa: ANN001, ANN202
        return lambda: torch.no_grad()(fn)(min(32, batch))

    cases = {
        f"LoRA training step, batch {batch} (s)": (lambda: train(run_ours, opts[0]), lambda: train(run_theirs, opts[1])),
        "guided sampling step, 16 (x2), LoRA unmerged (s)": (sample(run_ours), sample(run_theirs)),
    }  # fmt: skip
    print("| measure | zoo | diffusers | ratio diffusers/zoo (>1: zoo faster) |")
    print("|---|---|---|---|")
    compare(cases, args.steps)
    # merged: the adapters folded into the weights (no extra matmuls), as `merge_lora` does before sampling
    merge_lora(ours)
    merge_lora(theirs)  # peft's LoraLayer.merge on both
    compare(
        {"guided sampling step, 16 (x2), LoRA merged (s)": (sample(run_ours), sample(run_theirs))}, args.steps
    )
    unmerge_lora(ours)
    unmerge_lora(theirs)


if __name__ == "__main__":
    main()
