"""How far the `geneval` judge can be trusted, per category, and what a first stage leaves of a scene.

    python benchmarks/geneval_judge.py [--num 3000] [--ckpt runs/ldm/<run>/checkpoints/last.ckpt ...]

Real held-out `shapes` scenes of 1-3 objects (the test split of seed 0: no generator trains on it, and
the judge trains on other seeds' scenes) are each scored as a sample of the GenEval prompt that
describes them (`zoo.metrics.geneval.real_scene_accuracy`): a perfect judge scores 1.0 in every
category. With `--ckpt` (an ldm, or any latent family with a `first_stage`), the same scenes go
through its first stage (encode, decode) first: the best score that model's samples could get.
"""

from __future__ import annotations

import argparse
import time

import torch

import zoo
from zoo.checkpoint import load_model
from zoo.metrics.geneval import _scenes, real_scene_accuracy, shapes_judge


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num", type=int, default=3000, help="real test scenes")
    parser.add_argument(
        "--ckpt", nargs="*", default=[], help="latent-family checkpoints whose first stage to test"
    )
    args = parser.parse_args()
    data = zoo.create_datamodule("shapes", max_objects=3, num_train=1, num_val=1, num_test=args.num)
    start = time.perf_counter()
    data.setup("test")
    split = data.test_set
    images = torch.stack([split[i]["image"] for i in range(len(split))])
    scenes = _scenes(split)
    judge = shapes_judge(32)
    print(f"the judge's own held-out figures (its training seeds): {judge.held_out_accuracy}")
    print(f"{args.num} scenes rendered and read in {time.perf_counter() - start:.1f} s", flush=True)
    rows = [("real scenes", real_scene_accuracy(judge, images.add(1).div(2), scenes))]
    print(f"judged in {time.perf_counter() - start:.1f} s", flush=True)
    for ckpt in args.ckpt:
        first_stage = load_model(ckpt).first_stage
        with torch.no_grad():
            recon = torch.cat([first_stage.decode_latents(first_stage.encode_latents(x, sample=False))
                               for x in images.split(256)])  # fmt: skip
        rows.append(
            (
                f"through the first stage of {ckpt}",
                real_scene_accuracy(judge, recon.add(1).div(2).clamp(0, 1), scenes),
            )
        )
    print("| images | single_object | two_objects | position | counting | scenes (1 / 2 / 3 objects) |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        counts = " / ".join(
            str(r.get(f"{c}_scenes", 0)) for c in ("single_object", "two_objects", "counting")
        )
        cells = " | ".join(
            f"{r.get(c, float('nan')):.3f}" for c in ("single_object", "two_objects", "position", "counting")
        )
        print(f"| {name} | {cells} | {counts} |")


if __name__ == "__main__":
    main()
