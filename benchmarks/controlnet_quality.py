"""How well a `controlnet` checkpoint follows its control image (issue 17), with its base ldm alone beside it.

    python benchmarks/controlnet_quality.py --ckpt runs/controlnet/<run>/checkpoints/last.ckpt [--num 192] [--out benchmarks/grids]

On the first `--num` scenes of the base's held-out test split (1-3 objects, the scenes' own captions), each
sample is drawn from its scene's control image (`shapes`' `edges`, `segmentation` or `keypoints`, as the
net was trained) with the checkpoint's default sampler, steps and guidance, seed 0:

- IoU: the sample's foreground (pixels whose brightest channel exceeds 0.3; the background is black)
  against the region the condition outlines (the union of the scene's instance masks);
- colour right: for each object of the scene, the `shapes` judge's (zoo.metrics.geneval; trained on real
  scenes only) majority colour of the sample's pixels inside that object's mask is the caption's; an image
  counts when every object's is;
- centre error: the judge's objects in the sample matched to the scene's (Hungarian, scipy) by centre
  distance, in pixels; an object not found counts the image's side;
- the base ldm on the same captions and seeds without control, for scale (its IoU is chance overlap);
- with `edges`: the same from Canny edges of the real test image (`--control-from`'s path, kornia);
- disagreement: single-object scenes whose caption names another shape than the condition draws ("a red
  circle" over a square's outline): which shape the judge sees;
- sampling time per image, batch 16, against the base's.
Each figure is given for the single-object scenes and for all. A grid of condition | sample pairs goes to
--out/controlnet_<kind>.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

import zoo
from zoo.checkpoint import load_model
from zoo.control import condition_of_batch, condition_of_image
from zoo.evaluate import data_of_checkpoint
from zoo.io.images import save_grid
from zoo.metrics.geneval import shapes_judge

FOREGROUND = 0.3


def test_scenes(path: str, model, num: int) -> dict:
    """The first `num` scenes of the test split of the data the checkpoint was trained on (its base's)."""
    name, hparams = data_of_checkpoint(torch.load(path, map_location="cpu", weights_only=False), model)
    data = zoo.create_datamodule(name, **hparams)
    data.setup()
    items = [data.test_set[i] for i in range(min(num, len(data.test_set)))]
    return {
        k: [it[k] for it in items] if isinstance(items[0][k], str) else torch.stack([it[k] for it in items])
        for k in items[0]
    }


def generate(model, captions, control=None, batch=32) -> tuple[torch.Tensor, float]:
    out, start = [], time.perf_counter()
    for i in range(0, len(captions), batch):
        options = {} if control is None else {"control": control[i : i + batch]}
        out.append(model.generate(len(captions[i : i + batch]), condition=captions[i : i + batch],
                                  generator=torch.Generator().manual_seed(i), **options))  # fmt: skip
    return torch.cat(out), (time.perf_counter() - start) / len(captions)


def scores(images: torch.Tensor, scenes: dict, judge) -> dict[str, np.ndarray]:
    """Per image: IoU, all colours right, mean centre error (px)."""
    region = scenes["instance_masks"].amax(1) > 0.5
    foreground = images.amax(1) > FOREGROUND
    iou = ((region & foreground).sum((1, 2)) / (region | foreground).sum((1, 2)).clamp(min=1)).numpy()
    with torch.no_grad():
        color_map = judge.net(images.float())[0].argmax(1) - 1  # -1: background
    detected = judge.detect(images)
    colour_right, centre_error = [], []
    side = images.shape[-1]
    for i in range(len(images)):
        k = int(scenes["num_objects"][i])
        right = True
        for j in range(k):
            inside = color_map[i][(scenes["instance_masks"][i, j] > 0.5) & (color_map[i] >= 0)]
            right &= len(inside) > 0 and int(inside.mode().values) == int(scenes["colors"][i, j])
        colour_right.append(right)
        truth = scenes["centers"][i, :k].numpy()
        found = np.array([(o.cx, o.cy) for o in detected[i]]).reshape(-1, 2)
        cost = np.linalg.norm(truth[:, None] - found[None], axis=-1) if len(found) else np.zeros((k, 0))
        rows, cols = linear_sum_assignment(cost) if len(found) else ([], [])
        errors = [cost[r, c] for r, c in zip(rows, cols, strict=True)] + [float(side)] * (k - len(rows))
        centre_error.append(float(np.mean(errors)))
    return {"iou": iou, "colour": np.array(colour_right, dtype=float), "centre_px": np.array(centre_error)}


def report(name: str, result: dict[str, np.ndarray], single: np.ndarray) -> None:
    parts = []
    for key, values in result.items():
        parts.append(f"{key} {values[single].mean():.3f} / {values.mean():.3f}")
    print(f"| {name} | " + " | ".join(parts) + " |  (single-object / all)")


def disagreement(model, scenes: dict, judge, single: np.ndarray) -> None:
    shapes = ("circle", "square", "triangle")
    index = np.flatnonzero(single)
    captions = []
    for i in index:
        true = shapes[int(scenes["shapes"][i, 0])]
        other = shapes[(int(scenes["shapes"][i, 0]) + 1 + i % 2) % 3]
        captions.append(scenes["caption"][i].replace(true, other))
    control = condition_of_batch(
        model.hparams.condition, {k: v[index] for k, v in scenes.items() if torch.is_tensor(v)}
    )
    images, _ = generate(model, captions, control)
    seen = [d[0].shape if d else -1 for d in judge.detect(images)]
    follows_control = np.mean([s == int(scenes["shapes"][i, 0]) for s, i in zip(seen, index, strict=True)])
    follows_prompt = np.mean([s == shapes.index(c.split()[-1]) for s, c in zip(seen, captions, strict=True)])
    print(f"disagreement ({len(index)} single-object scenes, the caption's shape changed): the condition's shape "
          f"{follows_control:.3f}, the prompt's {follows_prompt:.3f}, neither/none {1 - follows_control - follows_prompt:.3f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--num", type=int, default=192)
    parser.add_argument("--out", default="benchmarks/grids")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model(args.ckpt)
    kind = model.hparams.condition
    scenes = test_scenes(args.ckpt, model, args.num)
    single = (scenes["num_objects"] == 1).numpy()
    judge = shapes_judge(model.base.hparams.image_size)
    print(f"{args.ckpt}: {kind} ControlNet; {len(single)} test scenes ({single.sum()} single-object); "
          f"judge held-out accuracy {judge.held_out_accuracy}")  # fmt: skip
    control = condition_of_batch(kind, scenes)
    images, seconds = generate(model, scenes["caption"], control)
    base_images, base_seconds = generate(model.base, scenes["caption"])
    print("| model | IoU | colour right | centre error (px) |")
    report(f"controlnet ({kind})", scores(images, scenes, judge), single)
    report("base ldm, no control", scores(base_images, scenes, judge), single)
    if kind == "edges":
        canny = condition_of_image("edges", (scenes["image"] + 1) / 2)
        canny_images, _ = generate(model, scenes["caption"], canny)
        report("controlnet, Canny edges of the real image", scores(canny_images, scenes, judge), single)
    disagreement(model, scenes, judge, single)
    batch = scenes["caption"][:16]
    _, seconds = generate(model, batch, control[:16], batch=16)
    _, base_seconds = generate(model.base, batch, batch=16)
    print(f"sampling time per image (batch 16): controlnet {seconds * 1000:.1f} ms, base {base_seconds * 1000:.1f} ms "
          f"({seconds / base_seconds:.2f}x)")  # fmt: skip
    pairs = torch.stack([control[:32], images[:32]], 1).flatten(0, 1)
    path = save_grid(pairs, Path(args.out) / f"controlnet_{kind}.png", nrow=8)
    print(f"grid: {path}")


if __name__ == "__main__":
    main()
