"""Super-resolution quality of an `sr_diffusion` checkpoint against bicubic upsampling, and prompt adherence
of a text-to-image cascade (issue 21, "Cascade").

    python benchmarks/sr_quality.py --ckpt runs/sr_diffusion/<run>/checkpoints/last.ckpt [--num 500] \
        [--noise-level 0.0 0.1 0.2 0.3] [--steps 20] [--out benchmarks/grids]
    python benchmarks/sr_quality.py --cascade --ckpt BASE16.ckpt --sr SR16to32.ckpt --sr SR32to64.ckpt \
        [--images-per-prompt 4] [--noise-level 0.2] [--out benchmarks/grids]

Upscaling (`--ckpt SR`): the first `--num` scenes of the held-out test split of the data the checkpoint was
trained on (its own datamodule arguments; 1-3 objects in the recipes) at the model's `image_size` are
area-averaged to its `low_resolution` (for the box-filtered `shapes` renders: the scene drawn at that size)
and brought back up by
- bicubic interpolation (clamped to [0, 1]), and bilinear;
- the model, at each `--noise-level`, with its sampler and steps (or `--steps`), seed 0.
Reported per method: PSNR against the real image (dB, over all pixels of all images, on [0, 1]), and by the
`shapes` judge (zoo.metrics.geneval; trained on real scenes only) at the image size: `scenes` the share of
images whose objects (colour, shape, count) it finds exactly as the scene has them, `colour` and `shape` the
share of the scenes' objects whose colour (shape) is found among the detected objects of the image. The
real images give the judge's ceiling. Sampling time per image too. A grid (low | bicubic | model | real,
one row per scene, 16 scenes) goes to `--out`/sr_quality.png.

Cascade (`--cascade`): GenEval-style prompt adherence (`zoo.metrics.geneval`, its fixed prompts and
categories) of BASE followed by the `--sr` stages (`zoo.cascade.Cascade`, the stages' sampling defaults
unless --steps / --noise-level), judged by the 32px judge (`--judge-size`; the images are area-averaged to
it), against the base's own images bicubic-upsampled to the same size (what the stages must not lose); time
per image of the base and of the whole cascade. A grid of the first prompts goes to `--out`/sr_cascade.png.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import zoo
from zoo.cascade import Cascade
from zoo.checkpoint import load_model
from zoo.evaluate import data_of_checkpoint
from zoo.io.images import save_grid
from zoo.metrics.geneval import _scenes, geneval, shapes_judge


def held_out(path: str, model, num: int) -> tuple[torch.Tensor, list]:
    """The first `num` test-split images (in [0, 1]) of the data the checkpoint was trained on, and their scenes."""
    name, hparams = data_of_checkpoint(torch.load(path, map_location="cpu", weights_only=False), model)
    data = zoo.create_datamodule(name, **(hparams | {"num_test": num}))
    data.setup()
    images = torch.stack([data.test_set[i]["image"] for i in range(len(data.test_set))]).add(1).div(2)
    return images, _scenes(data.test_set)


def psnr(images: torch.Tensor, truth: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / F.mse_loss(images.clamp(0, 1), truth)))


def judged(judge, images: torch.Tensor, scenes: list) -> dict[str, float]:
    """Exact scenes, and objects whose colour / shape the judge finds, against the known scenes."""
    exact, colours, shapes = [], [], []
    for scene, objects in zip(scenes, judge.detect(images), strict=True):
        exact.append(sorted((c, s) for c, s, *_ in scene) == sorted((o.color, o.shape) for o in objects))
        seen_colours, seen_shapes = Counter(o.color for o in objects), Counter(o.shape for o in objects)
        for c, s, *_ in scene:
            colours.append(seen_colours[c] > 0)
            shapes.append(seen_shapes[s] > 0)
            seen_colours[c] -= 1
            seen_shapes[s] -= 1
    return {
        "scenes": float(np.mean(exact)),
        "colour": float(np.mean(colours)),
        "shape": float(np.mean(shapes)),
    }


def upscale(model, low: torch.Tensor, batch: int, **options) -> tuple[torch.Tensor, float]:
    generator = torch.Generator().manual_seed(0)
    start, out = time.perf_counter(), []
    for i in range(0, len(low), batch):
        out.append(
            model.generate(
                len(low[i : i + batch]), condition=low[i : i + batch], generator=generator, **options
            )
        )
    return torch.cat(out), (time.perf_counter() - start) / len(low)


def upscaling(args: argparse.Namespace) -> dict:
    model = load_model(args.ckpt)
    hp = model.hparams
    truth, scenes = held_out(args.ckpt, model, args.num)
    low = F.interpolate(truth, size=(hp.low_resolution, hp.low_resolution), mode="area")
    size = (hp.image_size, hp.image_size)
    methods = {
        "bicubic": F.interpolate(low, size=size, mode="bicubic").clamp(0, 1),
        "bilinear": F.interpolate(low, size=size, mode="bilinear").clamp(0, 1),
    }
    seconds = {}
    options = {} if args.steps is None else {"steps": args.steps}
    for level in args.noise_level:
        name = f"sr_diffusion@{level}"
        methods[name], seconds[name] = upscale(model, low, args.batch_size, noise_level=level, **options)
    judge = shapes_judge(hp.image_size)
    report = {"real": {"psnr": float("inf"), **judged(judge, truth, scenes)}}
    for name, images in methods.items():
        report[name] = {"psnr": psnr(images, truth), **judged(judge, images, scenes)}
        if name in seconds:
            report[name]["seconds_per_image"] = seconds[name]
    print(f"{len(truth)} held-out scenes, {hp.low_resolution} -> {hp.image_size}px; {model.last_sampling}")
    print(f"{'method':22s} {'PSNR dB':>8s} {'scenes':>7s} {'colour':>7s} {'shape':>7s}")
    for name, r in report.items():
        print(f"{name:22s} {r['psnr']:8.2f} {r['scenes']:7.3f} {r['colour']:7.3f} {r['shape']:7.3f}")
    if args.out:
        rows = [F.interpolate(low[:16], size=size, mode="nearest"), methods["bicubic"][:16],
                methods[f"sr_diffusion@{args.noise_level[0]}"][:16], truth[:16]]  # fmt: skip
        grid = torch.stack(rows, dim=1).flatten(0, 1)
        print("grid:", save_grid(grid, Path(args.out) / "sr_quality.png", nrow=4))
    return report


def cascade_adherence(args: argparse.Namespace) -> dict:
    base = load_model(args.ckpt)
    stages = [(path, load_model(path)) for path in args.sr]
    stage_options = {
        k: v for k, v in (("noise_level", args.noise_level[0]), ("steps", args.steps)) if v is not None
    }
    Cascade(
        base, stages, base_name=args.ckpt, stage_options=stage_options
    )  # the sizes chain, or a clear error
    kept: dict[str, torch.Tensor] = {}
    timing = {"base": 0.0, "cascade": 0.0, "images": 0}

    def run(prompts: list[str]) -> torch.Tensor:
        """The cascade's images for `prompts`, at the judge's size; the base's own kept, bicubic, beside them."""
        generator, out, plain = torch.Generator().manual_seed(0), [], []
        for i in range(0, len(prompts), args.batch_size):
            chunk = prompts[i : i + args.batch_size]
            start = time.perf_counter()
            low = base.generate(len(chunk), condition=chunk, generator=generator)
            timing["base"] += time.perf_counter() - start
            images = low
            for _, stage in stages:
                images = stage.generate(len(chunk), condition=images, generator=generator, **stage_options)
            timing["cascade"] += time.perf_counter() - start
            out.append(images)
            plain.append(F.interpolate(low, size=images.shape[-2:], mode="bicubic").clamp(0, 1))
        timing["images"] += len(prompts)
        kept["cascade"], kept["base+bicubic"] = torch.cat(out), torch.cat(plain)
        return to_judge(kept["cascade"])

    def to_judge(images: torch.Tensor) -> torch.Tensor:
        side = args.judge_size
        return images if images.shape[-1] == side else F.interpolate(images, size=(side, side), mode="area")

    report = {"cascade": geneval(generate=run, images_per_prompt=args.images_per_prompt)}
    report["base+bicubic"] = geneval(
        generate=lambda p: to_judge(kept["base+bicubic"]), images_per_prompt=args.images_per_prompt
    )
    n = max(1, timing["images"])
    report["seconds_per_image"] = {"base": timing["base"] / n, "cascade": timing["cascade"] / n}
    report["stages"] = [{"stage": name, **stage.last_sampling} for name, stage in stages]
    for name in ("cascade", "base+bicubic"):
        print(name, {k: round(v, 3) for k, v in report[name].items()})
    print("seconds per image", report["seconds_per_image"])
    if args.out:
        grid = kept["cascade"][: 8 * args.images_per_prompt]
        print("grid:", save_grid(grid, Path(args.out) / "sr_cascade.png", nrow=args.images_per_prompt))
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--ckpt", required=True, help="the sr_diffusion checkpoint; with --cascade, the base model"
    )
    p.add_argument(
        "--cascade", action="store_true", help="prompt adherence of --ckpt followed by the --sr stages"
    )
    p.add_argument("--sr", action="append", default=[], help="--cascade: a super-resolution stage, in order")
    p.add_argument("--num", type=int, default=500, help="held-out scenes to upscale (default 500)")
    p.add_argument(
        "--noise-level", type=float, nargs="+", default=[0.2], help="sampling noise level(s) (default 0.2)"
    )
    p.add_argument("--steps", type=int, help="sampling steps of the SR model(s) (default theirs)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--images-per-prompt", type=int, default=4, help="--cascade: images per GenEval prompt")
    p.add_argument(
        "--judge-size", type=int, default=32, help="--cascade: the judge's image size (default 32)"
    )
    p.add_argument("--out", help="folder for the grid")
    p.add_argument("--json", help="write the report here")
    args = p.parse_args()
    if args.cascade and not args.sr:
        p.error("--cascade needs at least one --sr stage")
    torch.set_grad_enabled(False)
    report = cascade_adherence(args) if args.cascade else upscaling(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
