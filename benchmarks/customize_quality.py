"""Issue 18: how well `lora`, `textual_inversion` and `dreambooth` teach the default ldm a colour it never saw,
and what the base keeps.

    python -m zoo.concepts --color pink --shapes circle square --num 8 --token "<s1>" --out concepts/pink
    python -m zoo.fit --model lora --model.base LDM_CKPT --data image_folder --data.root concepts/pink
    python benchmarks/customize_quality.py --base LDM_CKPT --ckpt runs/lora/<run>/checkpoints/last.ckpt \
        [--file runs/lora/<run>/lora.safetensors[:SCALE]] [--num 32] [--grid benchmarks/grids/lora.png]

`--ckpt` is a checkpoint of one of the three families (sampled as it is); `--file` instead applies a
customization file to `--base` the way `zoo.sample --lora/--embedding` does; neither: the base itself (with
"<s1>" unknown to it). A judge of the shapes grammar trained on real scenes of all nine colours
(`shapes_judge(colors=ALL_COLOR_NAMES)`, 1.000 on held-out scenes; it never sees a generated image) reads:

- concept: "a <s1> circle|square|triangle", `--num` each (seeds 0..num-1): exactly one object, pink, of the
  asked shape; also pink alone and shape alone. The triangle is not among the concept images (composition).
- base prompts: the 18 "a red circle" ... prompts, `--num // 4` each: exactly one object of the asked colour
  and shape (the base model's single-object adherence, for forgetting).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from zoo.checkpoint import load_model
from zoo.customize import apply_customization, lora_layers, read_customization, set_lora_scales
from zoo.io.images import save_grid
from zoo.metrics.geneval import _shapes_module, shapes_judge

BASE_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
BASE_SHAPES = ("circle", "square", "triangle")


def load(args: argparse.Namespace):
    if args.ckpt:
        return load_model(args.ckpt).eval()
    model = load_model(args.base).eval()
    if args.file:  # as zoo.sample --lora FILE[:SCALE] (or --embedding, for a file of tokens alone)
        path, _, scale = args.file.rpartition(":") if ":" in args.file else (args.file, "", "1")
        if apply_customization(model, path, name="file", lora=bool(read_customization(path).lora)).lora:
            set_lora_scales(model, {"file": float(scale)})
    return model


def judged(
    model, judge, prompt: str, colour: int, shape: int, num: int, generator_seed: int
) -> tuple[dict, torch.Tensor]:
    generator = torch.Generator().manual_seed(generator_seed)
    images = model.generate(num, condition=prompt, generator=generator)
    found = judge.detect(images)
    right = [len(o) == 1 and o[0].color == colour and o[0].shape == shape for o in found]
    colour_ok = [len(o) >= 1 and o[0].color == colour for o in found]
    shape_ok = [len(o) >= 1 and o[0].shape == shape for o in found]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"right": mean(right), "colour": mean(colour_ok), "shape": mean(shape_ok)}, images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True)
    p.add_argument("--ckpt")
    p.add_argument("--file")
    p.add_argument("--token", default="<s1>")
    p.add_argument("--colour", default="pink")
    p.add_argument("--num", type=int, default=32)
    p.add_argument("--grid")
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(2)
    grammar = _shapes_module()
    judge = shapes_judge(32, colors=list(grammar.ALL_COLOR_NAMES))
    model = load(args)
    colours, shapes = list(grammar.ALL_COLOR_NAMES), list(grammar.ALL_SHAPE_NAMES)
    start, report, rows = time.time(), {"concept": {}}, []
    for shape in BASE_SHAPES:
        scores, images = judged(model, judge, f"a {args.token} {shape}", colours.index(args.colour),
                                shapes.index(shape), args.num, 0)  # fmt: skip
        report["concept"][shape] = scores
        rows.append(images[:8])
    base_right = []
    for colour in BASE_COLOURS:
        for shape in BASE_SHAPES:
            article = "an" if colour[0] in "aeiou" else "a"
            scores, images = judged(model, judge, f"{article} {colour} {shape}", colours.index(colour),
                                    shapes.index(shape), max(1, args.num // 4), 1)  # fmt: skip
            base_right.append(scores["right"])
            if shape == "circle" and colour in ("red", "blue"):
                rows.append(images[:8])
    seen = [report["concept"][s]["right"] for s in ("circle", "square")]
    report["concept_seen_shapes"] = sum(seen) / 2
    report["concept_unseen_triangle"] = report["concept"]["triangle"]["right"]
    report["concept_all"] = sum(report["concept"][s]["right"] for s in BASE_SHAPES) / 3
    report["base_single_object"] = sum(base_right) / len(base_right)
    report["lora_layers"] = len(lora_layers(getattr(model, "base", model)))
    report["seconds"] = round(time.time() - start, 1)
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.grid:
        save_grid(torch.cat(rows), args.grid, nrow=8)
        print(
            f"grid: rows 1-3 'a {args.token} circle/square/triangle', rows 4-5 'a red circle', 'a blue circle'"
        )


if __name__ == "__main__":
    main()
