"""Quality of a class-conditional `dit` checkpoint on `shapes`: class accuracy judged by the GenEval judge, FID.

    python benchmarks/dit_quality.py --ckpt runs/dit/<run>/checkpoints/last.ckpt [--per-class 16] [--steps 10,25]

- Class accuracy: `--per-class` samples of each of the 18 classes (colour x shape), judged by
  `zoo.metrics.geneval`'s judge (trained on real shapes scenes only) as the single-object prompt of that
  class: exactly one object, of the class's colour and shape; colour and shape apart too.
- FID with the zoo `shapes` extractor: `--fid-num` samples, labels those of the real test split, against
  the test split, and the real-vs-real baseline (train split against test split) at the same count.
Each step count of --steps is measured in turn; a grid (a row per class) goes to --out/steps<N>/.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import zoo
from zoo.checkpoint import load_model
from zoo.io.images import save_grid
from zoo.metrics import frechet_distance, image_extractor
from zoo.metrics.geneval import geneval, shapes_judge


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--per-class", type=int, default=16)
    parser.add_argument("--fid-num", type=int, default=1000)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--sampler", default=None)
    parser.add_argument("--steps", default=None, help="sampler steps, or several: 10,25 (each measured)")
    parser.add_argument("--out", default="benchmarks/out/dit")
    args = parser.parse_args()
    model = load_model(args.ckpt)
    hp = model.hparams
    names = zoo.create_datamodule("shapes").class_names  # "red circle", ... in label order
    judge = shapes_judge(hp.image_size)
    print(f"checkpoint {args.ckpt}: {hp.objective}; defaults {hp.sampler}, {hp.sampling_steps} steps, "
          f"guidance {hp.guidance}; judge held-out accuracy {judge.held_out_accuracy}")  # fmt: skip
    for steps in [None] if args.steps is None else [int(s) for s in args.steps.split(",")]:
        sampling = {
            k: v
            for k, v in (("guidance", args.guidance), ("sampler", args.sampler), ("steps", steps))
            if v is not None
        }
        print(f"\n## sampling {sampling or 'defaults'}")
        out = Path(args.out) / f"steps{steps or hp.sampling_steps}"
        generator = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        grid = model.generate(len(names) * 8, condition=torch.arange(len(names)).repeat_interleave(8),
                              generator=generator, **sampling)  # fmt: skip
        print(
            f"{len(grid)} samples in {time.perf_counter() - start:.1f} s ({torch.get_num_threads()} threads)"
        )
        print(f"grid: {save_grid(grid, out / 'classes.png', nrow=8)}")

        def by_prompt(prompts: list[str], sampling: dict = sampling, generator=generator) -> torch.Tensor:
            labels = torch.tensor([names.index(p.split(" ", 1)[1]) for p in prompts])  # "a red circle"
            return model.generate(len(labels), condition=labels, generator=generator, **sampling)

        report = geneval(generate=by_prompt, images_per_prompt=args.per_class, categories=("single_object",))
        print("| measure | value |\n|---|---|")
        for key in ("single_object", "colour", "shape"):
            print(f"| class accuracy: {key} | {report[key]:.3f} |")
        if args.fid_num > 0:
            fid(model, args.fid_num, sampling, out)


def fid(model: torch.nn.Module, num: int, sampling: dict, out: Path) -> None:
    size = model.hparams.image_size
    data = zoo.create_datamodule("shapes", image_size=size, num_test=num, num_train=max(num, 2000))
    data.setup()
    real_test = torch.stack([data.test_set[i]["image"] for i in range(num)]).add(1).div(2)
    real_train = torch.stack([data.train_set[i]["image"] for i in range(num)]).add(1).div(2)
    labels = torch.stack([data.test_set[i]["label"] for i in range(num)])
    generator = torch.Generator().manual_seed(1)
    fakes = torch.cat([
        model.generate(len(chunk), condition=chunk, generator=generator, **sampling) for chunk in labels.split(100)
    ])  # fmt: skip
    extractor = image_extractor("shapes", size, model.hparams.in_channels)
    with torch.no_grad():
        f_test, f_train, f_fake = (extractor(x) for x in (real_test, real_train, fakes))
    value, baseline = frechet_distance(f_test, f_fake), frechet_distance(f_test, f_train)
    print(f"| FID (zoo shapes extractor, {num} samples) | {value:.3f} (real-vs-real {baseline:.3f}) |")
    save_grid(fakes[:64], out / "fid_samples.png", nrow=8)


if __name__ == "__main__":
    main()
