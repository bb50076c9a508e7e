"""Quality of a class-conditional `ddpm` or `flow_matching` checkpoint on digits, per sampler and number of steps.

    python benchmarks/ddpm_quality.py --ckpt runs/ddpm/<run>/checkpoints/last.ckpt [--num 500] [--guidance 3]
    python benchmarks/ddpm_quality.py --ckpt runs/flow_matching/<run>/checkpoints/last.ckpt --guidance 2 \
        --samplers euler,heun --steps 1,2,4,8,25

Until zoo's metrics land, quality is measured with a feature extractor trained on the real
digits (`zoo.metrics.digits_judge`: multinomial logistic regression on pixels, at the checkpoint's
resolution; its held-out accuracy is printed): (1) the accuracy with which it recognises the
requested class in the samples, and (2) a Fréchet distance between the real and generated
distributions of its 10 logits (the FID formula, in this small feature space). Prints a Markdown
table with wall times; writes one grid per sampler to --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

import zoo
from zoo.checkpoint import load_model
from zoo.diffusion import SAMPLERS
from zoo.io.images import save_grid
from zoo.metrics.digits_judge import fit_digits_judge


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--num", type=int, default=500)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--steps", default="10,25,50")
    parser.add_argument("--samplers", help="comma-separated; default: all of ddpm's, or euler for a flow")
    parser.add_argument("--out", default="benchmarks/out/ddpm_quality")
    args = parser.parse_args()

    model = load_model(args.ckpt)
    if args.samplers is None:
        args.samplers = "euler" if hasattr(model, "velocity") else ",".join(SAMPLERS)
    size = model.hparams.image_size
    judge = fit_digits_judge(
        zoo.create_datamodule("digits", image_size=size, channels=model.hparams.in_channels)
    )
    classifier, x_train, x_test = judge.classifier, judge.train_pixels, judge.test_pixels
    real_features = classifier.decision_function(np.concatenate([x_train, x_test]))
    print(
        f"checkpoint {args.ckpt}: {size}x{size}, classifier held-out accuracy {judge.held_out_accuracy:.3f}"
    )
    print(f"reference: Fréchet distance between the real test split and the real train split: "
          f"{frechet_distance(classifier.decision_function(x_test), classifier.decision_function(x_train)):.2f}")  # fmt: skip
    print()
    print(
        f"| sampler | steps | class accuracy | Fréchet distance (logits) | time for {args.num} samples (s) |"
    )
    print("|---|---|---|---|---|")
    requested = torch.arange(args.num) % 10
    out = Path(args.out)
    for sampler in args.samplers.split(","):
        for steps in [int(s) for s in args.steps.split(",")]:
            start = time.perf_counter()
            images = model.generate(args.num, condition=requested, generator=torch.Generator().manual_seed(0),
                                    sampler=sampler, steps=steps, guidance=args.guidance)  # fmt: skip
            seconds = time.perf_counter() - start
            accuracy = float(np.mean(judge.predict(images) == requested.numpy()))
            distance = frechet_distance(real_features, judge.logits(images))
            print(f"| {sampler} | {steps} | {accuracy:.3f} | {distance:.2f} | {seconds:.1f} |", flush=True)
            save_grid(images[:100], out / f"{sampler}_{steps}.png", nrow=10)


if __name__ == "__main__":
    main()
