"""CPU speed levers of each family's default recipe: the training step under Lightning, as `zoo.fit` runs it.

    python benchmarks/cpu_levers.py [--families vae ldm ddpm gpt hifigan video_diffusion] [--steps 12] [--levers ...] [--compile]

For every family: its recipe (`configs/<family>/default.yaml`, its model and data at the recipe's batch size)
built by `zoo.fit` itself (`main(run=False)`, then the family's `prepare_fit` with a first stage of 2 steps:
an untrained first stage costs the same), trained for 3 warm-up and `--steps` timed steps with no
validation, grids or logger, under each lever:
- fp32 on 2 threads, and on 1 thread (each lever sets `--trainer.precision`: a recipe may choose bf16 itself);
- `--trainer.precision bf16-mixed` (autocast to bf16 on this CPU's AVX-512 BF16 units);
- channels-last weights (convolutional families);
- `torch.compile` of each trained network in the module (`--compile`: the first step, which compiles, is
  timed apart; minutes each).
A step is the time from `on_train_batch_start` to `on_train_batch_end` (forward, backward, optimizer;
GANs: both optimizers), median over the timed steps. One step is also counted by
`torch.utils.flop_counter.FlopCounterMode`, and set against the fp32 and bf16 matmul peaks measured here
(2048x2048 matmuls): the roofline fractions of RESULTS.md, "CPU speed".
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from zoo.fit import main as fit_main

FIRST_STAGE_STEPS = {"ldm": "--model.first_stage_steps", "video_diffusion": "--model.first_stage_steps"}
TWO_OPTIMIZERS = {"hifigan"}  # a batch is two optimizer steps, which trainer.max_steps counts
CONVOLUTIONAL = {"vae", "ldm", "ddpm", "hifigan", "video_diffusion"}


class StepTimer(L.Callback):
    """Seconds from batch start to batch end, after `warmup` batches; the FLOPs of the last warm-up batch."""

    def __init__(self, warmup: int, count_flops: bool) -> None:
        self.warmup, self.count_flops = warmup, count_flops
        self.times: list[float] = []
        self.first = 0.0
        self.flops = 0
        self.batches = 0
        self._mode: FlopCounterMode | None = None

    def on_train_batch_start(self, *args: Any) -> None:
        if self.count_flops and self.batches == self.warmup - 1:
            self._mode = FlopCounterMode(display=False)
            self._mode.__enter__()
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        elapsed = time.perf_counter() - self._start
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.flops, self._mode = self._mode.get_total_flops(), None
        if self.batches == 0:
            self.first = elapsed  # with torch.compile: the compilation
        elif self.batches >= self.warmup:
            self.times.append(elapsed)
        self.batches += 1


def time_recipe(family: str, steps: int, lever: str, warmup: int = 3) -> tuple[float, float, int]:
    batches = steps + warmup + 1
    flags = [
        "--model", family, "--trainer.max_steps", str(batches * (2 if family in TWO_OPTIMIZERS else 1)), "--trainer.limit_val_batches", "0",
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false", "--logger", "none",
        "--samples.every_n_steps", "0", "--samples.on_train_end", "false", "--trainer.default_root_dir", f"/tmp/cpu_levers/{family}-{lever}",
    ]  # fmt: skip
    if family in FIRST_STAGE_STEPS:
        flags += [FIRST_STAGE_STEPS[family], "2"]
    # explicit either way: a recipe may choose bf16-mixed itself (ddpm's does)
    flags += ["--trainer.precision", "bf16-mixed" if lever == "bf16-mixed" else "32-true"]
    torch.set_num_threads(1 if lever == "fp32, 1 thread" else 2)
    cli = fit_main(flags, run=False)
    cli.before_fit()  # the family's own preparation (tokenizer, first stage)
    model = cli.model
    if lever == "channels-last":
        model = model.to(memory_format=torch.channels_last)
    if lever == "compile":
        compile_networks(model)
    timer = StepTimer(warmup, count_flops=lever == "fp32")
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(model, datamodule=cli.datamodule)
    torch.set_num_threads(2)
    return statistics.median(timer.times), timer.first, timer.flops


def compile_networks(model: L.LightningModule) -> None:
    """`torch.compile` each trained network of `model` in place. Compiling the LightningModule itself compiles
    only its `forward`, which most families' `training_step` does not call; and ldm's text encoder, tokenizer
    included, recompiles for every new caption until dynamo gives up."""
    for child in model.children():
        if any(p.requires_grad for p in child.parameters()):
            child.compile()


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 20) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--families", nargs="+", default=["vae", "ldm", "ddpm", "gpt", "hifigan", "video_diffusion"]
    )
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument(
        "--compile", action="store_true", help="also torch.compile (minutes of compilation each)"
    )
    parser.add_argument(
        "--levers",
        nargs="+",
        default=["fp32", "fp32, 1 thread", "bf16-mixed", "channels-last"],
        help="which levers to time (fp32 is the baseline of the ratios and always runs)",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(
        f"matmul peaks, 2 threads: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s",
        flush=True,
    )
    levers = (
        ["fp32"] + [lever for lever in args.levers if lever != "fp32"] + (["compile"] if args.compile else [])
    )
    rows = []
    for family in args.families:
        result = {}
        for lever in levers:
            if lever == "channels-last" and family not in CONVOLUTIONAL:
                continue
            try:
                result[lever] = time_recipe(family, args.steps, lever)
            except Exception as error:  # torch.compile fails on some graphs; the other levers still count
                if lever != "compile":
                    raise
                print(f"{family} compile failed: {type(error).__name__}: {str(error).splitlines()[0]}")
                torch.set_num_threads(2)
                continue
            print(family, lever, result[lever], flush=True)
        rows.append((family, result))
    print(
        f"\ntorch {torch.__version__}, median of {args.steps} steps after 3 of warm-up; seconds a training step"
    )
    print("| family | " + " | ".join(levers) + " | GFLOP a step | fp32 roofline |")
    print("|---|" + "---|" * (len(levers) + 2))
    for family, result in rows:
        base, _, flops = result["fp32"]
        cells = []
        for lever in levers:
            if lever not in result:
                cells.append("-")
                continue
            seconds, first, _ = result[lever]
            extra = f", first {first:.0f} s" if lever == "compile" else ""
            cells.append(f"{seconds:.3f} ({base / seconds:.2f}x{extra})")
        fraction = flops / 1e9 / base / peaks["fp32"]
        print(f"| {family} | " + " | ".join(cells) + f" | {flops / 1e9:.1f} | {fraction:.0%} |")


if __name__ == "__main__":
    main()
