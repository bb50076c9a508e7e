"""How well an `ip_adapter` checkpoint reproduces its reference image (issue 17), and how `--ip-scale` trades
the image prompt against a text prompt.

    python benchmarks/ip_adapter_quality.py --ckpt runs/ip_adapter/<run>/checkpoints/last.ckpt [--num 96] [--out benchmarks/grids]

References are the single-object scenes among the held-out test split of the data the checkpoint trained on
(its base's). The `shapes` judge (zoo.metrics.geneval, trained on real scenes only) reads each sample:

- empty prompt, the reference alone (`--ip-scale`, `--guidance`, else the checkpoint's; seed 0): the
  largest object found has the reference's colour and shape ("reproduced"), and also nothing else is found
  ("exactly"); the base ldm with the empty prompt and the same seeds gives chance;
- a text prompt naming another colour and shape ("a blue square" for a red-circle reference), at IP scales
  0, 0.5, 1, 1.5 and 2: how often the sample's colour and shape are the prompt's, or the reference's.
A grid of reference | sample pairs (empty prompt) goes to --out/ip_adapter.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import zoo
from zoo.checkpoint import load_model
from zoo.evaluate import data_of_checkpoint
from zoo.io.images import save_grid
from zoo.metrics.geneval import shapes_judge

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle")


def references(path: str, model, num: int) -> dict:
    name, hparams = data_of_checkpoint(torch.load(path, map_location="cpu", weights_only=False), model)
    data = zoo.create_datamodule(name, **hparams)
    data.setup()
    index = [i for i in range(len(data.test_set)) if int(data.test_set.data["num_objects"][i]) == 1][:num]
    items = [data.test_set[i] for i in index]
    return {
        "image": (torch.stack([it["image"] for it in items]) + 1) / 2,
        "color": np.array([int(it["colors"][0]) for it in items]),
        "shape": np.array([int(it["shapes"][0]) for it in items]),
    }


def sample(model, prompts, batch=32, **options) -> torch.Tensor:
    out = []
    for i in range(0, len(prompts), batch):
        chunk = {k: v[i : i + batch] if torch.is_tensor(v) else v for k, v in options.items()}
        out.append(model.generate(len(prompts[i : i + batch]), condition=prompts[i : i + batch],
                                  generator=torch.Generator().manual_seed(i), **chunk))  # fmt: skip
    return torch.cat(out)


def largest(judge, images) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    found = judge.detect(images)
    colour = np.array([f[0].color if f else -1 for f in found])
    shape = np.array([f[0].shape if f else -1 for f in found])
    return colour, shape, np.array([len(f) for f in found])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--num", type=int, default=96)
    parser.add_argument("--out", default="benchmarks/grids")
    parser.add_argument(
        "--ip-scale", type=float, default=None, help="the empty-prompt IP scale (default: the model's)"
    )
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    parser.add_argument(
        "--skip", type=int, default=0, help="leave out the first SKIP single-object references"
    )
    args = parser.parse_args()
    model = load_model(args.ckpt)
    refs = {k: v[args.skip :] for k, v in references(args.ckpt, model, args.skip + args.num).items()}
    options = {"guidance": args.guidance} if args.guidance is not None else {}
    n = len(refs["color"])
    judge = shapes_judge(model.base.hparams.image_size)
    print(f"{args.ckpt}: {n} single-object references; judge held-out accuracy {judge.held_out_accuracy}")
    empty = [""] * n
    scale = {"ip_scale": args.ip_scale} if args.ip_scale is not None else {}
    images = sample(model, empty, image_prompt=refs["image"], **scale, **options)
    colour, shape, count = largest(judge, images)
    right = (colour == refs["color"]) & (shape == refs["shape"])
    print(f"empty prompt, reference alone: reproduced {right.mean():.3f} (colour {(colour == refs['color']).mean():.3f}, "
          f"shape {(shape == refs['shape']).mean():.3f}), exactly one object and right {(right & (count == 1)).mean():.3f}")  # fmt: skip
    colour, shape, _ = largest(judge, sample(model.base, empty, **options))
    chance = (colour == refs["color"]) & (shape == refs["shape"])
    print(f"base ldm, empty prompt (chance): {chance.mean():.3f}")
    other_colour, other_shape = (refs["color"] + 3) % 6, (refs["shape"] + 1) % 3
    prompts = [f"a {COLOURS[c]} {SHAPES[s]}" for c, s in zip(other_colour, other_shape, strict=True)]
    print("| IP scale | colour: prompt's | colour: reference's | shape: prompt's | shape: reference's |")
    print("|---|---|---|---|---|")
    for scale in (0.0, 0.5, 1.0, 1.5, 2.0):
        colour, shape, _ = largest(
            judge, sample(model, prompts, image_prompt=refs["image"], ip_scale=scale, **options)
        )
        print(f"| {scale} | {(colour == other_colour).mean():.3f} | {(colour == refs['color']).mean():.3f} | "
              f"{(shape == other_shape).mean():.3f} | {(shape == refs['shape']).mean():.3f} |")  # fmt: skip
    pairs = torch.stack([refs["image"][:32], images[:32]], 1).flatten(0, 1)
    print(f"grid: {save_grid(pairs, Path(args.out) / 'ip_adapter.png', nrow=8)}")


if __name__ == "__main__":
    main()
