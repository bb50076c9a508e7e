"""Quality and speed of few-step students of a class-conditional digits teacher (issue 16), against the
teacher at its default sampler, steps and guidance, in one run on the same machine.

    python benchmarks/few_step_quality.py --teacher runs/ddpm/<run>/checkpoints/last.ckpt \
        --students runs/consistency/<run>/checkpoints/last.ckpt,runs/progressive_distillation/<run>/checkpoints/last.ckpt \
        [--steps 1,2,4,8] [--num 500] [--out benchmarks/grids]

Measured with zoo's digits extractor (`zoo.metrics.extractors.image_extractor`, a small CNN trained on the
real train split, held-out accuracy printed): the class accuracy (its label head on the requested class)
and the FID between its features of the samples and of the real test split (`zoo.metrics.image`), with
the real-vs-real FID (train against test) as the noise floor. Wall time per image, batch of `--num`. A
student's steps beyond what it can take (a progressive student's 8 beyond its grid) are skipped. Writes a
grid per (model, steps), a row per class.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import zoo
from zoo.checkpoint import load_model
from zoo.io.images import save_grid
from zoo.metrics.extractors import image_extractor
from zoo.metrics.image import frechet_distance


def real_split(name: str, size: int, channels: int) -> torch.Tensor:
    data = zoo.create_datamodule("digits", image_size=size, channels=channels)
    data.setup()
    dataset = getattr(data, f"{name}_set")
    return (torch.stack([dataset[i]["image"] for i in range(len(dataset))]) + 1) / 2


def measure(
    model, extractor, real_features, requested, steps, **options
) -> tuple[float, float, float, torch.Tensor]:
    start = time.perf_counter()
    images = model.generate(len(requested), condition=requested, generator=torch.Generator().manual_seed(0),
                            steps=steps, **options)  # fmt: skip
    seconds = (time.perf_counter() - start) / len(requested)
    with torch.no_grad():
        accuracy = (extractor.logits(images).argmax(1) == requested).float().mean().item()
        fid = frechet_distance(real_features, extractor(images))
    return accuracy, fid, seconds, images


def student_recipe(student) -> str:
    """What tells two students of one family apart in the table."""
    hp = student.hparams
    if type(student).__name__ == "Consistency":
        return "CT" if hp.teacher_family is None else f"CD of a {hp.teacher_family}"
    keys = ("parameterization", "loss_weighting", "round_steps")
    return ", ".join(f"{k} {hp[k]}" for k in keys if k in hp)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--students", default="", help="comma-separated checkpoints")
    parser.add_argument("--steps", default="1,2,4,8")
    parser.add_argument("--num", type=int, default=500)
    parser.add_argument("--out", default="benchmarks/grids")
    args = parser.parse_args()

    teacher = load_model(args.teacher)
    size, channels = teacher.hparams.image_size, teacher.hparams.in_channels
    extractor = image_extractor("digits", size, channels)
    test, train = real_split("test", size, channels), real_split("train", size, channels)
    with torch.no_grad():
        real_features = extractor(test)
        floor = frechet_distance(real_features, extractor(train))
    print(
        f"extractor held-out accuracy {extractor.held_out_accuracy:.3f}; real-vs-real FID (train vs test) {floor:.2f}"
    )
    print(
        "\n| model | steps | network passes a step | class accuracy | FID | ms per image |\n|---|---|---|---|---|---|"
    )
    requested = torch.arange(args.num) % 10
    out = Path(args.out)

    hp = teacher.hparams
    accuracy, fid, seconds, images = measure(teacher, extractor, real_features, requested, None)
    teacher_seconds = seconds
    print(f"| teacher `{type(teacher).__name__}` ({hp.sampler}, guidance {hp.guidance}) | {hp.sampling_steps} | 2 | "
          f"{accuracy:.3f} | {fid:.2f} | {1000 * seconds:.2f} |", flush=True)  # fmt: skip
    for path in filter(None, args.students.split(",")):
        student = load_model(path)
        family, run, stem = type(student).__name__, Path(path).parent.parent.name, Path(path).stem
        name = f"{family} ({run}, {stem}, {student_recipe(student)})"
        for steps in [int(s) for s in args.steps.split(",")]:
            try:
                accuracy, fid, seconds, images = measure(student, extractor, real_features, requested, steps)
            except ValueError as err:
                print(f"| {name} | {steps} | - | skipped: {err} | | |")
                continue
            print(f"| {name} | {steps} | 1 | {accuracy:.3f} | {fid:.2f} | {1000 * seconds:.2f} "
                  f"({teacher_seconds / seconds:.1f}x faster) |", flush=True)  # fmt: skip
            order = torch.argsort(requested[:100], stable=True)
            grid = f"few_step_{family.lower()}_{run}_{stem.replace('=', '')}_{steps}.png"
            save_grid(images[:100][order], out / grid, nrow=10)


if __name__ == "__main__":
    main()
