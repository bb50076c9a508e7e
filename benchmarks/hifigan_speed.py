"""Real-time factor of `hifigan` inference on one CPU thread, and its training step time.

    OMP_NUM_THREADS=1 python benchmarks/hifigan_speed.py [--seconds 10] [--repeats 5]

Vocodes a log-mel of `--seconds` of audio (22050 Hz, hop 256) with weight norm folded into the
weights (as for deployment) and reports seconds of audio per second of compute (the issue's goal:
>= 20x for the default size; HiFi-GAN V3's published CPU figure is 13.4x). Sizes: the default
(V3 layout, 128 channels) and V3 itself (256 channels, 1.46M parameters). The mel is random: the
network's cost does not depend on its values. Then times training steps of the default recipe's
configuration (batch 8 of 8192 samples, one D and one G step).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from zoo.plugins.hifigan import HiFiGAN, random_segments


def real_time_factor(model: HiFiGAN, seconds: float, repeats: int) -> tuple[float, float]:
    model.eval()
    model.generator.remove_weight_norm()
    frames = int(seconds * model.sample_rate / model.hparams.hop_length)
    mel = torch.randn(1, model.hparams.n_mels, frames)
    times = []
    with torch.inference_mode():
        model(mel)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            audio = model(mel)
            times.append(time.perf_counter() - start)
    duration = audio.shape[-1] / model.sample_rate
    return duration / statistics.median(times), statistics.median(times)


def training_step_time(steps: int) -> float:
    model = HiFiGAN(upsample_initial_channel=128, discriminator_width=0.125, segment_size=8192, lr=5e-4)
    opt_g, opt_d = model.configure_optimizers()[0]
    audio = torch.randn(8, 16384).clamp(-1, 1) * 0.3
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        real = random_segments(audio, None, 8192)
        fake = model(model.mel(real))
        d_loss = model.discriminator_step_loss(real, fake)
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        parts = model.adversarial_losses(real, fake)
        mel_l1 = torch.nn.functional.l1_loss(model.loss_mel(fake), model.loss_mel(real))
        g_loss = parts["adv"] + 2 * parts["fm"] + 45 * mel_l1
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for name, width in (("default (V3 layout, 128 ch)", 128), ("HiFi-GAN V3 (256 ch)", 256)):
        model = HiFiGAN(upsample_initial_channel=width)
        params = sum(p.numel() for p in model.generator.parameters()) / 1e6
        rtf, seconds = real_time_factor(model, args.seconds, args.repeats)
        print(
            f"{name}: {params:.2f}M parameters, {args.seconds:.0f} s of audio in {seconds:.3f} s: {rtf:.1f}x real time"
        )
    if args.train_steps:
        step = training_step_time(args.train_steps)
        print(f"training step, default recipe (batch 8 x 8192 samples, D + G): {step:.2f} s")


if __name__ == "__main__":
    main()
