"""GenEval-style prompt adherence on the `shapes` grammar (after Ghosh et al. 2023, "GenEval").

A fixed set of prompts in four categories; a *judge* finds the objects in each generated image and
decides whether the image shows what its prompt asked for:

| category | prompts | an image is right when |
|---|---|---|
| `single_object` | "a red circle" (6 colours x 3 shapes) | exactly one object, of the asked colour and shape |
| `two_objects` | "a red circle left of a blue square" | exactly two objects, the asked ones (colour and shape) |
| `position` | the same prompts | ... and the first is left of / right of / above / below the second |
| `counting` | "a red circle, a blue square and a green triangle" | exactly three objects, the asked ones |

`colour` and `shape` (of single-object prompts, judged alone) are reported too; `overall` is the
mean of the four categories, as GenEval averages its tasks.

The judge is independent of any generator: a small fully convolutional network trained here on
the `shapes` datamodule's *real* images and instance masks (one to three objects per image), which
labels every pixel with a colour (or background) and a shape; objects are the connected regions of
one colour, each with the majority shape of its pixels and its centroid. It never sees a generated
image. Its own accuracy on real held-out scenes is measured when it is trained and stored with it
(`ShapesJudge.held_out_accuracy`); it is cached like the feature extractors, in
`$ZOO_CACHE/judges/` (default `~/.cache/zoo/judges/`).

By default the judge knows the datamodule's six colours and three shapes. `shapes_judge(colors=...,
shapes=...)` trains (and caches, under a file name that lists them) one that knows other colours and
shapes of the full tables, e.g. all nine colours for a concept ("pink") the generator never saw. A
detected object's `color` and `shape` are always indices into the full tables ALL_COLOR_NAMES and
ALL_SHAPE_NAMES, whichever judge found it (the defaults are their first entries).

    judge = shapes_judge()                                   # trained on first use (~1 minute), then cached
    judge = shapes_judge(32, colors=["red", "green", "blue", "yellow", "purple", "orange", "pink", "cyan",
                                      "brown"])              # ... knowing pink, cyan and brown too
    objects = judge.detect(images)                           # images (B, 3, H, W) in [0, 1]
    report = geneval(model, images_per_prompt=4)             # {"single_object": ..., "overall": ...}
    python -m zoo.evaluate --ckpt runs/ldm/<run>/checkpoints/last.ckpt --metrics geneval
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from zoo import registry
from zoo.metrics.extractors import cache_dir
from zoo.metrics.registry import MetricContext, register_metric

JUDGE_VERSION = "1"
MIN_OBJECT_PIXELS = 6  # smaller same-colour regions are speckle, not objects
CATEGORIES = ("single_object", "two_objects", "position", "counting")


@functools.cache
def _shapes_module() -> Any:
    # the grammar lives beside ShapesDataModule; a lookup of entry points is slow, so once
    return registry.datamodule_module("shapes")


@dataclass(frozen=True)
class DetectedObject:
    color: int  # index into the shapes grammar's full table ALL_COLOR_NAMES (its first six: COLOR_NAMES)
    shape: int  # index into ALL_SHAPE_NAMES (its first three: SHAPE_NAMES)
    cx: float
    cy: float
    pixels: int


@dataclass(frozen=True)
class PromptSpec:
    """One evaluation prompt: its text, category and the objects asked for (colour, shape), in order."""

    text: str
    category: str
    objects: tuple[tuple[int, int], ...]
    relation: str | None = None  # two-object prompts: where the first object is relative to the second


class JudgeNet(nn.Module):
    """A small U-Net: per-pixel colour logits (background + colours) and shape logits (background + shapes)."""

    def __init__(self, num_colors: int, num_shapes: int, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            )  # fmt: skip

        self.enc1, self.enc2, self.enc3 = (
            block(3, width),
            block(width, 2 * width),
            block(2 * width, 2 * width),
        )
        self.dec2, self.dec1 = block(4 * width, 2 * width), block(3 * width, width)
        self.color_head = nn.Conv2d(width, num_colors + 1, 1)
        self.shape_head = nn.Conv2d(width, num_shapes + 1, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e1 = self.enc1(images * 2 - 1)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(e3, scale_factor=2.0), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], 1))
        return self.color_head(d1), self.shape_head(d1)


class ShapesJudge:
    """Finds the objects of shapes-style images; see the module docstring.

    `colors` and `shapes` are the names it was trained on (None: the datamodule's defaults), in the
    order of its heads; `self.colors` / `self.shapes` hold them as indices into the full tables, which
    `color_names` / `shape_names` are and which every DetectedObject indexes."""

    def __init__(
        self,
        net: JudgeNet,
        image_size: int,
        held_out_accuracy: dict[str, float] | None = None,
        colors: list[str] | None = None,
        shapes: list[str] | None = None,
    ) -> None:
        self.net = net.eval().requires_grad_(False)
        self.image_size = image_size
        self.held_out_accuracy = held_out_accuracy or {}
        grammar = _shapes_module()
        self.color_names, self.shape_names = tuple(grammar.ALL_COLOR_NAMES), tuple(grammar.ALL_SHAPE_NAMES)
        self.colors, self.shapes = grammar.palette(colors, shapes)
        heads = (net.color_head.out_channels - 1, net.shape_head.out_channels - 1)
        if heads != (len(self.colors), len(self.shapes)):
            raise ValueError(
                f"a judge net with {heads[0]} colours and {heads[1]} shapes cannot judge "
                f"{len(self.colors)} colours and {len(self.shapes)} shapes"
            )

    @torch.no_grad()
    def detect(self, images: torch.Tensor, batch_size: int = 256) -> list[list[DetectedObject]]:
        """The objects in each image (B, 3, H, W) in [0, 1], largest first."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"the judge reads RGB images (B, 3, H, W), got shape {tuple(images.shape)}")
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bilinear", antialias=True
            )
        found: list[list[DetectedObject]] = []
        for start in range(0, len(images), batch_size):
            color_logits, shape_logits = self.net(images[start : start + batch_size].float().cpu())
            colors = color_logits.argmax(1).numpy()
            shape_probs = shape_logits[:, 1:].softmax(1).numpy()
            for color_map, probs in zip(colors, shape_probs, strict=True):
                objects = []
                for color in range(1, color_logits.shape[1]):
                    regions, count = ndimage.label(color_map == color)
                    for region in range(1, count + 1):
                        where = regions == region
                        pixels = int(where.sum())
                        if pixels < MIN_OBJECT_PIXELS:
                            continue
                        ys, xs = np.nonzero(where)
                        shape = self.shapes[int(probs[:, where].sum(1).argmax())]
                        objects.append(
                            DetectedObject(
                                self.colors[color - 1], shape, xs.mean() + 0.5, ys.mean() + 0.5, pixels
                            )
                        )
                found.append(sorted(objects, key=lambda o: -o.pixels))
        return found

    def judge(self, spec: PromptSpec, objects: list[DetectedObject]) -> dict[str, bool]:
        """Which of the prompt's requirements an image with `objects` meets."""
        asked = sorted(spec.objects)
        seen = sorted((o.color, o.shape) for o in objects)
        verdict = {"correct": len(objects) == len(asked) and seen == asked}
        if spec.category == "single_object" and objects:
            verdict["colour"] = len(objects) == 1 and objects[0].color == asked[0][0]
            verdict["shape"] = len(objects) == 1 and objects[0].shape == asked[0][1]
        elif spec.category == "single_object":
            verdict["colour"] = verdict["shape"] = False
        if spec.category == "position":
            ok = verdict["correct"] and len(set(spec.objects)) == 2
            if ok:
                first = next(o for o in objects if (o.color, o.shape) == spec.objects[0])
                second = next(o for o in objects if (o.color, o.shape) == spec.objects[1])
                ok = _shapes_module().relation((first.cx, first.cy), (second.cx, second.cy)) == spec.relation
            verdict["correct"] = ok
        return verdict


# --- the prompts ----------------------------------------------------------------------------------


def _phrase(color: str, shape: str) -> str:
    words = f"{color} {shape}"
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def geneval_prompts(seed: int = 0, pairs: int = 24, triples: int = 12) -> list[PromptSpec]:
    """The fixed prompt set: every colour x shape alone, `pairs` two-object prompts (each of the four
    relations equally often; each also a `position` prompt) and `triples` three-object prompts; the
    objects of one prompt differ in colour (so the judge can tell them apart) and are drawn with `seed`."""
    grammar = _shapes_module()
    colors, shapes = grammar.COLOR_NAMES, grammar.SHAPE_NAMES
    specs = [
        PromptSpec(_phrase(colors[c], shapes[s]), "single_object", ((c, s),))
        for c, s in itertools.product(range(len(colors)), range(len(shapes)))
    ]
    rng = np.random.default_rng(seed)
    relations = ("left of", "right of", "above", "below")

    def distinct(k: int) -> list[tuple[int, int]]:
        chosen = rng.choice(len(colors), size=k, replace=False)
        return [(int(c), int(rng.integers(len(shapes)))) for c in chosen]

    for i in range(pairs):
        (c1, s1), (c2, s2) = distinct(2)
        relation = relations[i % len(relations)]
        text = f"{_phrase(colors[c1], shapes[s1])} {relation} {_phrase(colors[c2], shapes[s2])}"
        for category in ("two_objects", "position"):
            specs.append(PromptSpec(text, category, ((c1, s1), (c2, s2)), relation))
    for _ in range(triples):
        objs = distinct(3)
        phrases = [_phrase(colors[c], shapes[s]) for c, s in objs]
        specs.append(PromptSpec(f"{phrases[0]}, {phrases[1]} and {phrases[2]}", "counting", tuple(objs)))
    return specs


# --- training and caching the judge ---------------------------------------------------------------


def _pixel_targets(
    batch: dict[str, torch.Tensor], color_indices: tuple[int, ...], shape_indices: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel classes: 0 the background, else 1 + the object's colour's (shape's) position among the
    judge's `color_indices` (`shape_indices`), indices into the full tables."""
    grammar = _shapes_module()
    color_class = torch.zeros(len(grammar.ALL_COLOR_NAMES), dtype=torch.long)
    color_class[list(color_indices)] = torch.arange(1, len(color_indices) + 1)
    shape_class = torch.zeros(len(grammar.ALL_SHAPE_NAMES), dtype=torch.long)
    shape_class[list(shape_indices)] = torch.arange(1, len(shape_indices) + 1)
    masks = batch["instance_masks"] > 0.5  # (B, K, H, W)
    colors = torch.zeros(masks.shape[0], *masks.shape[2:], dtype=torch.long)
    shapes = torch.zeros_like(colors)
    for k in range(masks.shape[1]):
        present = (batch["colors"][:, k] >= 0)[:, None, None] & masks[:, k]
        colors = torch.where(present, color_class[batch["colors"][:, k].clamp(min=0)][:, None, None], colors)
        shapes = torch.where(present, shape_class[batch["shapes"][:, k].clamp(min=0)][:, None, None], shapes)
    return colors, shapes


def _scenes(split: Any) -> list[list[tuple[int, int, float, float]]]:
    out = []
    for i in range(len(split)):
        item = split[i]
        masks = item["instance_masks"]
        scene = []
        for k in range(int(item["num_objects"])):
            ys, xs = torch.nonzero(masks[k] > 0.5, as_tuple=True)
            scene.append(
                (
                    int(item["colors"][k]),
                    int(item["shapes"][k]),
                    float(xs.float().mean()),
                    float(ys.float().mean()),
                )
            )
        out.append(scene)
    return out


def train_shapes_judge(
    image_size: int = 32,
    num_train: int = 6000,
    num_test: int = 1000,
    epochs: int = 4,
    seed: int = 0,
    colors: list[str] | None = None,
    shapes: list[str] | None = None,
) -> ShapesJudge:
    """Train the judge on real `shapes` scenes of 1-3 objects of the `colors` and `shapes` (names of
    the full tables; None: the defaults) and measure it on held-out real scenes of them."""
    grammar = _shapes_module()
    color_indices, shape_indices = grammar.palette(colors, shapes)
    data = registry.get_datamodule_class("shapes")(
        image_size=image_size, min_objects=1, max_objects=3, num_train=num_train, num_val=1, num_test=num_test,
        batch_size=64, seed=seed + 1234,  # not the generators' default seed: other scenes than they train on
        colors=colors, shapes=shapes,
    )  # fmt: skip
    data.setup("fit")
    train = data.train_set
    images = torch.stack([train[i]["image"] for i in range(len(train))]).add(1).div(2)
    items = [train[i] for i in range(len(train))]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("instance_masks", "colors", "shapes")}
    color_targets, shape_targets = _pixel_targets(batch, color_indices, shape_indices)

    torch.manual_seed(seed)
    net = JudgeNet(len(color_indices), len(shape_indices))
    steps_per_epoch = len(images) // 64
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for step in range(steps_per_epoch):
            index = order[step * 64 : (step + 1) * 64]
            color_logits, shape_logits = net(images[index])
            # shape is learnt on object pixels only: on the background it is fixed by the colour head
            shape_loss = (
                F.cross_entropy(shape_logits, shape_targets[index], ignore_index=0)
                if (shape_targets[index] > 0).any()
                else 0.0
            )
            loss = F.cross_entropy(color_logits, color_targets[index]) + shape_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    judge = ShapesJudge(net, image_size, colors=colors, shapes=shapes)
    judge.held_out_accuracy = judge_accuracy(judge, data.test_set)
    return judge


def judge_accuracy(judge: ShapesJudge, split: Any) -> dict[str, float]:
    """Share of real scenes whose objects the judge gets exactly right (colour, shape, count), overall
    and by number of objects, and share of two-object scenes whose relation it gets right; and per
    colour and per shape (`color_pink`, `shape_star`, ...), the share of the scenes' objects of it that
    the judge finds (an object of the same colour and shape among those it detects)."""
    grammar = _shapes_module()
    images = torch.stack([split[i]["image"] for i in range(len(split))]).add(1).div(2)
    detected = judge.detect(images)
    right: dict[int, list[bool]] = {}
    relation_right = []
    found: dict[str, list[bool]] = {}
    for scene, objects in zip(_scenes(split), detected, strict=True):
        ok = sorted((c, s) for c, s, _, _ in scene) == sorted((o.color, o.shape) for o in objects)
        right.setdefault(len(scene), []).append(ok)
        unmatched = Counter((o.color, o.shape) for o in objects)
        for c, s, _, _ in scene:
            hit = unmatched[(c, s)] > 0
            unmatched[(c, s)] -= hit
            found.setdefault(f"color_{grammar.ALL_COLOR_NAMES[c]}", []).append(hit)
            found.setdefault(f"shape_{grammar.ALL_SHAPE_NAMES[s]}", []).append(hit)
        if len(scene) == 2 and ok and len({c for c, *_ in scene}) == 2:
            truth = grammar.relation(scene[0][2:], scene[1][2:])
            first = next(o for o in objects if o.color == scene[0][0])
            second = next(o for o in objects if o.color == scene[1][0])
            relation_right.append(grammar.relation((first.cx, first.cy), (second.cx, second.cy)) == truth)
    report = {"scenes": float(np.mean([v for vs in right.values() for v in vs]))}
    report |= {f"{k}_objects": float(np.mean(v)) for k, v in sorted(right.items())}
    if relation_right:
        report["relation"] = float(np.mean(relation_right))
    report |= {key: float(np.mean(hits)) for key, hits in sorted(found.items())}
    return report


def scene_spec(scene: list[tuple[int, int, float, float]]) -> list[PromptSpec]:
    """The GenEval prompts a real scene (colour, shape, cx, cy per object) answers, as `geneval_prompts`
    words them: one object: single_object; two of different colours: two_objects and position (the
    relation from the centres); three of different colours: counting. Other scenes: none."""
    grammar = _shapes_module()
    colors, shapes = grammar.ALL_COLOR_NAMES, grammar.ALL_SHAPE_NAMES
    objects = tuple((c, s) for c, s, _, _ in scene)
    phrases = [_phrase(colors[c], shapes[s]) for c, s in objects]
    if len(scene) == 1:
        return [PromptSpec(phrases[0], "single_object", objects)]
    if len({c for c, _ in objects}) < len(objects):
        return []  # geneval's prompts never repeat a colour (the judge tells objects apart by colour)
    if len(scene) == 2:
        relation = grammar.relation(scene[0][2:], scene[1][2:])
        text = f"{phrases[0]} {relation} {phrases[1]}"
        return [PromptSpec(text, c, objects, relation) for c in ("two_objects", "position")]
    if len(scene) == 3:
        return [PromptSpec(f"{phrases[0]}, {phrases[1]} and {phrases[2]}", "counting", objects)]
    return []


def real_scene_accuracy(
    judge: ShapesJudge, images: torch.Tensor, scenes: list[list[tuple]]
) -> dict[str, float]:
    """The judge's score, per GenEval category, on real images (B, 3, H, W) in [0, 1] whose `scenes` are
    known: each image taken as a sample for the prompt that describes it (`scene_spec`). A perfect
    judge scores 1.0 in every category; images through a first stage (its reconstructions) measure
    what that first stage leaves of a scene."""
    results: dict[str, list[bool]] = {}
    for scene, objects in zip(scenes, judge.detect(images), strict=True):
        for spec in scene_spec(scene):
            results.setdefault(spec.category, []).append(judge.judge(spec, objects)["correct"])
    return {c: float(np.mean(results[c])) for c in CATEGORIES if c in results} | {
        f"{c}_scenes": len(results[c]) for c in CATEGORIES if c in results
    }


def judge_path(image_size: int, colors: list[str] | None = None, shapes: list[str] | None = None) -> Path:
    """Where the judge of `image_size` images knowing `colors` and `shapes` is cached: the default
    judge's file (`shapes-32px-v1.safetensors`) unless they differ from the defaults, else a file
    naming them in order (`shapes-32px-red.green.(...).brown-circle.square.triangle-v1.safetensors`)."""
    grammar = _shapes_module()
    color_indices, shape_indices = grammar.palette(colors, shapes)
    default_colors, default_shapes = grammar.palette()
    named = ""
    if (color_indices, shape_indices) != (default_colors, default_shapes):
        named = (f"-{'.'.join(grammar.ALL_COLOR_NAMES[c] for c in color_indices)}"
                   f"-{'.'.join(grammar.ALL_SHAPE_NAMES[s] for s in shape_indices)}")  # fmt: skip
    return cache_dir() / "judges" / f"shapes-{image_size}px{named}-v{JUDGE_VERSION}.safetensors"


def shapes_judge(
    image_size: int = 32,
    colors: list[str] | None = None,
    shapes: list[str] | None = None,
    *,
    verbose: bool = True,
) -> ShapesJudge:
    """The judge for `image_size` images that knows `colors` and `shapes` (names of the full tables;
    None: the datamodule's defaults): from the cache, else trained now (about a minute) and cached."""
    from safetensors.torch import load_file, save_file

    path = judge_path(image_size, colors, shapes)
    grammar = _shapes_module()
    if path.exists():
        color_indices, shape_indices = grammar.palette(colors, shapes)
        net = JudgeNet(len(color_indices), len(shape_indices))
        net.load_state_dict(load_file(str(path)))
        accuracy = json.loads(path.with_suffix(".json").read_text())
        return ShapesJudge(net, image_size, accuracy, colors=colors, shapes=shapes)
    start = time.perf_counter()
    judge = train_shapes_judge(image_size, colors=colors, shapes=shapes)
    path.parent.mkdir(parents=True, exist_ok=True)
    # write-then-rename, the JSON first: a concurrent reader never sees a half-written judge
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    save_file(judge.net.state_dict(), str(tmp))
    path.with_suffix(".json").write_text(json.dumps(judge.held_out_accuracy))
    os.replace(tmp, path)
    if verbose:
        print(f"geneval: trained the shapes judge in {time.perf_counter() - start:.0f} s; held-out accuracy on "
              f"real scenes {judge.held_out_accuracy}; cached in {path}")  # fmt: skip
    return judge


# --- the evaluation -------------------------------------------------------------------------------


def score(
    judge: ShapesJudge, specs: list[PromptSpec], images: torch.Tensor, images_per_prompt: int
) -> dict[str, float]:
    """Per-category accuracy of `images` (specs x images_per_prompt, prompt-major) and `overall`."""
    detected = judge.detect(images)
    results: dict[str, list[bool]] = {}
    for i, objects in enumerate(detected):
        spec = specs[i // images_per_prompt]
        verdict = judge.judge(spec, objects)
        results.setdefault(spec.category, []).append(verdict["correct"])
        if spec.category == "single_object":
            results.setdefault("colour", []).append(verdict["colour"])
            results.setdefault("shape", []).append(verdict["shape"])
    report = {name: float(np.mean(values)) for name, values in results.items()}
    present = [report[c] for c in CATEGORIES if c in report]
    report["overall"] = float(np.mean(present)) if present else float("nan")
    return report


def geneval(
    model: Any = None,
    *,
    generate: Callable[[list[str]], torch.Tensor] | None = None,
    images_per_prompt: int = 4,
    seed: int = 0,
    batch_size: int = 64,
    categories: tuple[str, ...] = CATEGORIES,
    **sampling: Any,
) -> dict[str, float]:
    """Generate `images_per_prompt` images for each prompt and score them.

    Images come from `generate(prompts) -> images in [0, 1]` if given (zoo.evaluate passes its seeded,
    batched generator), else from `model.generate` in batches of `batch_size` with a generator
    seeded with `seed` and the `sampling` options."""
    specs = [s for s in geneval_prompts() if s.category in categories]
    # one generation per distinct text: two_objects and position prompts share their images
    texts = list(dict.fromkeys(s.text for s in specs))
    prompts = [t for t in texts for _ in range(images_per_prompt)]
    if generate is None:
        if model is None:
            raise ValueError("geneval needs a model or a generate(prompts) function")
        generator = torch.Generator().manual_seed(seed)

        def generate(chunk_prompts: list[str]) -> torch.Tensor:
            return torch.cat([
                model.generate(len(chunk_prompts[i : i + batch_size]), condition=chunk_prompts[i : i + batch_size],
                               generator=generator, **sampling)
                for i in range(0, len(chunk_prompts), batch_size)
            ])  # fmt: skip

    images = generate(prompts).float().cpu()
    by_text = dict(zip(texts, images.split(images_per_prompt), strict=True))
    images = torch.cat([by_text[s.text] for s in specs])
    judge = shapes_judge(int(images.shape[-1]))
    return score(judge, specs, images, images_per_prompt)


@register_metric("geneval", modalities=("image",), needs=("model",), higher_is_better=True)
def geneval_metric(ctx: MetricContext) -> dict[str, float]:
    """GenEval-style prompt adherence on the shapes grammar (text-to-image families)."""
    ctx.require("model", metric="geneval (prompt adherence needs a text-to-image checkpoint, --ckpt)")
    per_prompt = int(ctx.options.get("geneval_images_per_prompt", 4))
    report = geneval(generate=lambda prompts: ctx.generate(prompts), images_per_prompt=per_prompt)
    return {f"geneval_{k}" if k != "overall" else "geneval": v for k, v in report.items()}
