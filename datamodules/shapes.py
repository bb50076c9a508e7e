"""Procedural coloured shapes with captions, instance masks and edge maps: the zoo's embedded image data.

`render_shapes` draws whole datasets as numpy arrays (other datamodules reuse it and `draw_shape`);
`ShapesDataModule` wraps three seeded, disjoint splits of it.

Besides the six default colours and three default shapes the module knows pink, cyan and brown, and
star, hexagon and cross (the full tables ALL_COLOR_NAMES, ALL_SHAPE_NAMES): concepts a model trained on
the defaults never saw. `colors=` / `shapes=` (`--data.colors '[pink]'`) draw from any of them, and
`write_concept_folder` writes a few images of one new colour as an `image_folder` whose captions name
it by a placeholder token, the data of textual inversion, DreamBooth or a LoRA:

    python -m zoo.concepts --color pink --shapes circle square --num 8 --token "<s1>" --out concept/
    # concept/0000.png ... 0007.png and concept/captions.csv: "a <s1> circle", "a <s1> square", ...
    python -m zoo.fit --model ... --data image_folder --data.root concept/ --data.image_size 32

    from zoo.datamodules.shapes import write_concept_folder
    root = write_concept_folder("concept/", "pink", ["circle", "square"], num=8, token="<s1>")
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from zoo.data import ZooDataModule
from zoo.errors import DataError
from zoo.io.images import is_image_file

from ._images import check_image_args, derived_seed, rgb_to_grey, uint8_to_signed

# The full tables of colours and shapes the module can draw. An object's `color` / `shape` index is
# always an index into these; the first six colours and three shapes are the defaults (COLOR_NAMES,
# SHAPE_NAMES, COLOR_RGB), so default data is indexed the same either way. The others are there for
# concepts a model trained on the defaults never saw (`colors=` / `shapes=`, `write_concept_folder`).
ALL_COLOR_NAMES: tuple[str, ...] = (
    "red", "green", "blue", "yellow", "purple", "orange", "pink", "cyan", "brown",
)  # fmt: skip
ALL_COLOR_RGB = np.array(
    [(225, 30, 30), (30, 175, 55), (40, 85, 235), (245, 220, 35), (150, 55, 205), (250, 135, 15),
     # pink, cyan, brown: each over 110 apart in RGB from every other colour (pink and purple 119, cyan
     # and blue 134, brown and red 113), and brown bluer than the darkened orange or yellow of an
     # anti-aliased edge
     (255, 105, 180), (0, 210, 210), (130, 85, 55)],
    dtype=np.uint8,
)  # fmt: skip
ALL_SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")
COLOR_NAMES: tuple[str, ...] = ALL_COLOR_NAMES[:6]  # the default palette
COLOR_RGB = ALL_COLOR_RGB[:6]
SHAPE_NAMES: tuple[str, ...] = ALL_SHAPE_NAMES[:3]  # the default shapes
SIZE_NAMES: tuple[str, ...] = ("small", "large")
# ControlNet conditions: the segmentation map's colour of each shape class (circle red, square green,
# triangle blue, star yellow, hexagon magenta, cross cyan), and the width of the keypoint map's bumps
SEGMENTATION_PALETTE = np.array(
    [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1)], dtype=np.float32
)
KEYPOINT_SIGMA = 0.8
BACKGROUND_RGB = np.array((0, 0, 0), dtype=np.uint8)

SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: anti-aliased edges at any size
# An object's scale s is drawn uniformly from these ranges, as a fraction of image_size. A circle has
# radius s; the other shapes are sized so their areas are close to the circle's (pi s^2; see
# CIRCUMRADIUS), and a large object is always clearly larger than a small one: at least 1.2x the area,
# whatever the shapes (a large triangle, 2.55 s^2, against a small square, 3.24 s^2: 1.5625 x 0.79).
SCALE_RANGES = ((0.13, 0.16), (0.20, 0.25))
STAR_INNER = 0.5  # a star's inner corners lie at half the radius of its five tips
CROSS_ARM = 1.19  # a cross (plus sign): arms reach 1.19 s from the centre and are a third of that span wide
# Circumradius / scale (how far a shape reaches from its centre): a square of half-side 0.9 s (area
# 3.24 s^2), an equilateral triangle of circumradius 1.4 s (2.55 s^2), a star with tips at 1.45 s
# (5 R r sin 36 deg = 3.09 s^2), a regular hexagon of circumradius 1.1 s (3.14 s^2), a cross of arm
# 1.19 s and half-width 1.19 s / 3 (20/9 arm^2 = 3.15 s^2).
CIRCUMRADIUS = {
    "circle": 1.0, "square": 0.9 * math.sqrt(2.0), "triangle": 1.4,
    "star": 1.45, "hexagon": 1.1, "cross": CROSS_ARM * math.hypot(1.0, 1.0 / 3.0),
}  # fmt: skip
# Inradius / scale: the largest circle about the centre inside the shape (a lower bound is enough: two
# objects whose inscribed circles meet overlap for sure). A star's nearest outline points are its inner
# corners (its edges run outwards from them, since 1.45 cos 36 deg > 0.725); a cross's are the four
# corners where its arms meet, at half-width x sqrt(2).
INRADIUS = {
    "circle": 1.0, "square": 0.9, "triangle": 0.7,
    "star": STAR_INNER * CIRCUMRADIUS["star"], "hexagon": CIRCUMRADIUS["hexagon"] * math.cos(math.pi / 6),
    "cross": CROSS_ARM / 3.0 * math.sqrt(2.0),
}  # fmt: skip
MAX_SCENE_TRIES = 200
MAX_PLACEMENT_TRIES = 30


class ShapeObject(NamedTuple):
    """One object of a scene: indices into ALL_SHAPE_NAMES, ALL_COLOR_NAMES, SIZE_NAMES; geometry in pixels."""

    shape: int
    color: int
    size: int
    cx: float
    cy: float
    scale: float  # circle radius; see CIRCUMRADIUS for the others
    angle: float  # radians


def palette(
    colors: list[str] | tuple[str, ...] | str | None = None,
    shapes: list[str] | tuple[str, ...] | str | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The indices into ALL_COLOR_NAMES and ALL_SHAPE_NAMES of the colours and shapes named (in the order
    given); None: the defaults, COLOR_NAMES and SHAPE_NAMES. An unknown, repeated or missing name is a
    DataError that lists the known ones."""

    def indices(names: Any, table: tuple[str, ...], default: tuple[str, ...], what: str) -> tuple[int, ...]:
        if names is None:
            return tuple(range(len(default)))
        names = [names] if isinstance(names, str) else list(names)
        unknown = [name for name in names if name not in table]
        if unknown:
            raise DataError(f"unknown {what} {', '.join(map(repr, unknown))} for shapes; known {what}s: "
                            f"{', '.join(table)}")  # fmt: skip
        if not names or len(set(names)) < len(names):
            raise DataError(
                f"shapes needs one or more distinct {what}s (known: {', '.join(table)}), got {names}"
            )
        return tuple(table.index(name) for name in names)

    return (
        indices(colors, ALL_COLOR_NAMES, COLOR_NAMES, "colour"),
        indices(shapes, ALL_SHAPE_NAMES, SHAPE_NAMES, "shape"),
    )


def class_names(colors: list[str] | None = None, shapes: list[str] | None = None) -> list[str]:
    """The label of an image is its first object's colour and shape: "red circle", "red square", ...
    over the colours and shapes chosen (default: the six colours and three shapes, 18 classes)."""
    color_indices, shape_indices = palette(colors, shapes)
    return [f"{ALL_COLOR_NAMES[c]} {ALL_SHAPE_NAMES[s]}" for c in color_indices for s in shape_indices]


def _polygon(
    shape: str, cx: float, cy: float, scale: float, angle: float, factor: int
) -> list[tuple[float, float]]:
    """The corners of a polygonal shape, in pixels of a canvas `factor` times the target resolution."""
    x, y = cx * factor, cy * factor
    if shape == "cross":
        arm = CROSS_ARM * scale * factor
        half = arm / 3.0
        local = [(half, -arm), (half, -half), (arm, -half), (arm, half), (half, half), (half, arm),
                 (-half, arm), (-half, half), (-arm, half), (-arm, -half), (-half, -half), (-half, -arm)]  # fmt: skip
        cos, sin = math.cos(angle), math.sin(angle)
        return [(x + u * cos - v * sin, y + u * sin + v * cos) for u, v in local]
    r = CIRCUMRADIUS[shape] * scale * factor
    # angle 0: the square stands on a side, the triangle, the star and the hexagon point up.
    start = -math.pi / 2 + (math.pi / 4 if shape == "square" else 0.0) + angle
    if shape == "star":
        return [
            (
                x + (r if k % 2 == 0 else STAR_INNER * r) * math.cos(start + math.pi * k / 5),
                y + (r if k % 2 == 0 else STAR_INNER * r) * math.sin(start + math.pi * k / 5),
            )
            for k in range(10)
        ]
    corners = {"square": 4, "triangle": 3, "hexagon": 6}[shape]
    return [
        (
            x + r * math.cos(start + 2 * math.pi * k / corners),
            y + r * math.sin(start + 2 * math.pi * k / corners),
        )
        for k in range(corners)
    ]


def draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    cx: float,
    cy: float,
    scale: float,
    angle: float,
    *,
    factor: int = SUPERSAMPLE,
    fill: int | None = 255,
    outline: int | None = None,
    width: int = 0,
) -> None:
    """Draw one shape on a canvas `factor` times the target resolution.

    (cx, cy) is the centre in target pixels, with pixel (i, j) covering [i, i+1) x [j, j+1); `scale` is
    the circle radius in target pixels (see CIRCUMRADIUS for the others); `angle` is in radians.
    """
    # Measured: PIL fills polygons, and ellipses with this bounding box, symmetrically about the given
    # centre when pixel j spans [j, j+1), so mask centroids land on (cx, cy) without a shift.
    x, y = cx * factor, cy * factor
    if shape == "circle":
        r = scale * factor
        draw.ellipse(
            (x - r + 0.5, y - r + 0.5, x + r - 0.5, y + r - 0.5), fill=fill, outline=outline, width=width
        )
        return
    draw.polygon(_polygon(shape, cx, cy, scale, angle, factor), fill=fill, outline=outline, width=width)


def shape_keypoints(
    shape: str, cx: float, cy: float, scale: float, angle: float
) -> list[tuple[float, float]]:
    """A shape's "pose" (the `keypoints` ControlNet condition): its convex corners as `draw_shape` draws
    them (all of a triangle's, square's and hexagon's; a star's five tips; the eight corners at the ends
    of a cross's arms), and for a circle the four points of its outline at 0, 90, 180 and 270 degrees
    (x, y in pixels)."""
    if shape == "circle":
        return [
            (cx + scale * math.cos(a), cy + scale * math.sin(a))
            for a in (0, math.pi / 2, math.pi, 1.5 * math.pi)
        ]
    corners = _polygon(shape, cx, cy, scale, angle, 1)
    if shape == "star":
        return corners[::2]
    if shape == "cross":
        return [point for k, point in enumerate(corners) if k % 3 != 1]
    return corners


def keypoint_map(
    objects: list[tuple[str, float, float, float, float]], image_size: int, sigma: float = KEYPOINT_SIGMA
) -> np.ndarray:
    """The `keypoints` condition of a scene, float32 (3, S, S) in [0, 1]: channel 0 a Gaussian bump
    (`sigma` pixels) at each object's centre, channel 1 at each of its keypoints (`shape_keypoints`),
    channel 2 zero (an RGB picture). `objects` are (shape name, cx, cy, scale, angle)."""
    pixel = np.arange(image_size, dtype=np.float32) + 0.5  # pixel i covers [i, i + 1)
    out = np.zeros((3, image_size, image_size), dtype=np.float32)

    def bump(x: float, y: float) -> np.ndarray:
        return np.exp(-((pixel[None, :] - x) ** 2 + (pixel[:, None] - y) ** 2) / (2 * sigma**2))

    for shape, cx, cy, scale, angle in objects:
        out[0] = np.maximum(out[0], bump(cx, cy))
        for x, y in shape_keypoints(shape, cx, cy, scale, angle):
            out[1] = np.maximum(out[1], bump(x, y))
    return out


def segmentation_map(masks: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """The `segmentation` condition, float32 (3, S, S) in {0, 1}: each object's pixels (`masks` (K, S, S)) in
    its shape class's colour of `SEGMENTATION_PALETTE` (circle red, square green, triangle blue; star
    yellow, hexagon magenta, cross cyan), absent objects (shape -1) left out; the background black."""
    palette = SEGMENTATION_PALETTE[np.maximum(shapes, 0)] * (shapes >= 0)[:, None]  # (K, 3)
    return np.einsum("khw,kc->chw", masks.astype(np.float32), palette).clip(0, 1)


def shape_alpha(shape: str, cx: float, cy: float, scale: float, angle: float, image_size: int) -> np.ndarray:
    """Anti-aliased coverage (uint8 0..255, shape (image_size, image_size)) of one shape."""
    size = image_size * SUPERSAMPLE
    canvas = Image.new("L", (size, size), 0)
    draw_shape(ImageDraw.Draw(canvas), shape, cx, cy, scale, angle)
    return np.asarray(canvas.reduce(SUPERSAMPLE))


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    rows = out.copy()
    out[:, 1:] |= rows[:, :-1]
    out[:, :-1] |= rows[:, 1:]
    return out


def _sample_scene(
    rng: np.random.Generator,
    count: int,
    image_size: int,
    colors: tuple[int, ...] = tuple(range(len(COLOR_NAMES))),
    shapes: tuple[int, ...] = tuple(range(len(SHAPE_NAMES))),
) -> tuple[list[ShapeObject], list[np.ndarray]]:
    """Random objects of the given colours and shapes (indices into the full tables) with at least one
    clear pixel between them and the border, and their coverages."""
    for _ in range(MAX_SCENE_TRIES):
        objects: list[ShapeObject] = []
        alphas: list[np.ndarray] = []
        occupied = np.zeros((image_size, image_size), dtype=bool)
        for _ in range(count):
            shape = shapes[int(rng.integers(len(shapes)))]  # the defaults: the same draws as ever
            color = colors[int(rng.integers(len(colors)))]
            size = int(rng.integers(len(SIZE_NAMES)))
            scale = float(rng.uniform(*SCALE_RANGES[size])) * image_size
            angle = float(rng.uniform(0.0, 2 * math.pi)) if ALL_SHAPE_NAMES[shape] != "circle" else 0.0
            reach = CIRCUMRADIUS[ALL_SHAPE_NAMES[shape]] * scale + 1.0  # keep a pixel clear of the border
            low, high = reach, max(reach, image_size - reach)
            for _ in range(MAX_PLACEMENT_TRIES):
                cx, cy = (float(v) for v in rng.uniform(low, high, size=2))
                # Objects whose inscribed circles meet overlap for sure: reject them without drawing.
                inner = INRADIUS[ALL_SHAPE_NAMES[shape]] * scale
                if any(
                    math.hypot(cx - o.cx, cy - o.cy) < inner + INRADIUS[ALL_SHAPE_NAMES[o.shape]] * o.scale
                    for o in objects
                ):
                    continue
                alpha = shape_alpha(ALL_SHAPE_NAMES[shape], cx, cy, scale, angle, image_size)
                if not (occupied & (alpha > 0)).any():
                    break
            else:
                break  # this object does not fit: start the scene again
            objects.append(ShapeObject(shape, color, size, cx, cy, scale, angle))
            alphas.append(alpha)
            occupied |= _dilate(alpha > 0)
        else:
            if count == 2:
                # Relations come from the dominant axis between centres; skip near-diagonal pairs.
                dx, dy = abs(objects[1].cx - objects[0].cx), abs(objects[1].cy - objects[0].cy)
                if max(dx, dy) < 1.25 * min(dx, dy):
                    continue
            return objects, alphas
    raise RuntimeError(
        f"could not place {count} non-overlapping shapes in a {image_size}x{image_size} image; "
        f"use fewer objects or a larger image_size"
    )


def relation(first_center: tuple[float, float], second_center: tuple[float, float]) -> str:
    """Where the first object is relative to the second, along the dominant axis (y grows downwards)."""
    dx = second_center[0] - first_center[0]
    dy = second_center[1] - first_center[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def caption_for(objects: list[ShapeObject]) -> str:
    """ "a red circle"; "a red circle left of a small blue square"; "an orange circle, a blue square and a green triangle".
    Any colour and shape of the full tables ("a pink star").

    One object is named by colour and shape alone. With several, small objects are called small and
    the others (large) are unmarked.
    """

    def phrase(obj: ShapeObject) -> str:
        small = len(objects) > 1 and SIZE_NAMES[obj.size] == "small"
        words = f"{'small ' if small else ''}{ALL_COLOR_NAMES[obj.color]} {ALL_SHAPE_NAMES[obj.shape]}"
        return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"

    if len(objects) == 1:
        return phrase(objects[0])
    if len(objects) == 2:
        first, second = objects
        return f"{phrase(first)} {relation((first.cx, first.cy), (second.cx, second.cy))} {phrase(second)}"
    return ", ".join(phrase(obj) for obj in objects[:-1]) + f" and {phrase(objects[-1])}"


RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")


def parse_caption(text: str) -> list[tuple[str, str, str]] | None:
    """The objects of a caption of `caption_for`'s grammar as (size, colour, shape) triples, or None
    when `text` is not a sentence of that grammar (a wrong article counts as not parsing). Sizes
    are "small" or "large"; a lone object has no size word and parses as "large". Any colour and shape
    of the full tables (ALL_COLOR_NAMES, ALL_SHAPE_NAMES) parses."""
    import re

    phrase = rf"(an?) (small )?({'|'.join(ALL_COLOR_NAMES)}) ({'|'.join(ALL_SHAPE_NAMES)})"
    pair = re.fullmatch(rf"({phrase}) (?:{'|'.join(RELATIONS)}) ({phrase})", text)
    if pair:  # two objects: always joined by a relation
        parts = [pair.group(1), pair.group(6)]
    elif text.count(" and ") == 1:  # three or more: "A, B and C"
        head, last = text.split(" and ")
        parts = [*head.split(", "), last]
        if len(parts) < 3:
            return None
    else:
        parts = [text]
    objects = []
    for part in parts:
        m = re.fullmatch(phrase, part)
        if m is None:
            return None
        article, small, color, shape = m.groups()
        if article != ("an" if (small or color)[0] in "aeiou" else "a"):
            return None
        if small and len(parts) == 1:  # a lone object is never called small
            return None
        objects.append(("small" if small else "large", color, shape))
    return objects


def check_object_counts(
    min_objects: int, max_objects: int, object_weights: list[float] | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """None for a uniform number of objects, else (the counts, their probabilities)."""
    if not 1 <= min_objects <= max_objects:
        raise DataError(f"need 1 <= min_objects <= max_objects, got {min_objects} and {max_objects}")
    if object_weights is None:
        return None
    counts = np.arange(min_objects, max_objects + 1)
    weights = np.asarray(object_weights, dtype=np.float64)
    if weights.shape != counts.shape or (weights < 0).any() or weights.sum() <= 0:
        raise DataError(
            f"object_weights needs {len(counts)} non-negative weights, one for each count "
            f"{min_objects}..{max_objects}, not all zero; got {list(object_weights)}"
        )
    return counts, weights / weights.sum()


def render_shapes(
    num: int,
    *,
    image_size: int = 32,
    min_objects: int = 1,
    max_objects: int = 1,
    object_weights: list[float] | None = None,
    seed: int = 0,
    colors: list[str] | None = None,
    shapes: list[str] | None = None,
) -> dict[str, Any]:
    """Render `num` images of min_objects..max_objects non-overlapping coloured shapes on black.

    Each object's colour and shape are drawn uniformly from `colors` and `shapes` (names of
    ALL_COLOR_NAMES and ALL_SHAPE_NAMES; None: the defaults, COLOR_NAMES and SHAPE_NAMES, which give the
    very images, captions and labels the module gave before it knew other colours and shapes).

    The number of objects of an image is uniform over min_objects..max_objects, or drawn with the
    relative `object_weights` (one per count, in order). Deterministic for a seed. Returns a dict of numpy arrays (K = max_objects; absent objects are -1,
    or zeros in masks):

    - `images` uint8 (num, S, S, 3) RGB
    - `instance_masks` uint8 (num, K, S, S) in {0, 1}: pixels at least half covered by object k
    - `edges` uint8 (num, S, S): anti-aliased outlines of the objects, about one pixel wide
    - `num_objects` int64 (num,); `colors`, `shapes`, `sizes` int64 (num, K): indices into
      ALL_COLOR_NAMES, ALL_SHAPE_NAMES (the full tables, whatever was chosen), SIZE_NAMES
    - `centers` float32 (num, K, 2) as (x, y) in pixels, `scales` float32 (num, K) in pixels (circle
      radius), `angles` float32 (num, K) in radians
    - `captions`: a list of `num` strings (see `caption_for`)
    """
    check_image_args(image_size, 3, min_size=8)
    counts = check_object_counts(min_objects, max_objects, object_weights)
    color_indices, shape_indices = palette(colors, shapes)
    rng = np.random.default_rng(seed)
    size, k_max = image_size, max_objects
    alphas = np.zeros((num, k_max, size, size), dtype=np.uint8)
    edges = np.zeros((num, size, size), dtype=np.uint8)
    num_objects = np.zeros(num, dtype=np.int64)
    colors, shapes, sizes = (np.full((num, k_max), -1, dtype=np.int64) for _ in range(3))
    centers = np.full((num, k_max, 2), -1.0, dtype=np.float32)
    scales = np.full((num, k_max), -1.0, dtype=np.float32)
    angles = np.full((num, k_max), -1.0, dtype=np.float32)
    captions: list[str] = []
    big = size * SUPERSAMPLE
    for i in range(num):
        count = int(
            rng.integers(min_objects, max_objects + 1)
            if counts is None
            else rng.choice(counts[0], p=counts[1])
        )
        objects, object_alphas = _sample_scene(rng, count, size, color_indices, shape_indices)
        outline = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(outline)
        for k, obj in enumerate(objects):
            alphas[i, k] = object_alphas[k]
            shapes[i, k], colors[i, k], sizes[i, k] = obj.shape, obj.color, obj.size
            centers[i, k] = (obj.cx, obj.cy)
            scales[i, k], angles[i, k] = obj.scale, obj.angle
            draw_shape(
                draw,
                ALL_SHAPE_NAMES[obj.shape],
                obj.cx,
                obj.cy,
                obj.scale,
                obj.angle,
                fill=None,
                outline=255,
                width=SUPERSAMPLE,
            )
        edges[i] = np.asarray(outline.reduce(SUPERSAMPLE))
        num_objects[i] = count
        captions.append(caption_for(objects))

    # Objects never overlap, so the image is the background plus each object's coverage times its colour.
    images = np.empty((num, size, size, 3), dtype=np.uint8)
    background = BACKGROUND_RGB.astype(np.float32)
    deltas = ALL_COLOR_RGB[np.maximum(colors, 0)].astype(np.float32) - background  # (num, K, 3)
    for start in range(0, num, 512):
        stop = min(start + 512, num)
        coverage = alphas[start:stop].astype(np.float32) / 255.0
        mixed = background + np.einsum("nkhw,nkc->nhwc", coverage, deltas[start:stop])
        images[start:stop] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)

    return {
        "images": images,
        "instance_masks": (alphas >= 128).astype(np.uint8),
        "edges": edges,
        "num_objects": num_objects,
        "colors": colors,
        "shapes": shapes,
        "sizes": sizes,
        "centers": centers,
        "scales": scales,
        "angles": angles,
        "captions": captions,
    }


def _take(data: dict[str, Any], index: np.ndarray) -> dict[str, Any]:
    return {
        key: [value[i] for i in index] if isinstance(value, list) else value[index]
        for key, value in data.items()
    }


def _concat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        key: sum((part[key] for part in parts), [])
        if key == "captions"
        else np.concatenate([p[key] for p in parts])
        for key in parts[0]
    }


class ShapesDataset(Dataset):
    """Items of `render_shapes` output as batch dictionaries; arrays stay uint8 until an item is asked for.
    `colors` and `shapes` are the names the data was rendered with (None: the defaults): the label is
    the first object's colour's position among them times their number of shapes, plus its shape's."""

    def __init__(
        self,
        data: dict[str, Any],
        channels: int = 3,
        shuffle_captions: bool = False,
        colors: list[str] | None = None,
        shapes: list[str] | None = None,
    ) -> None:
        self.data = data
        self.images = data["images"] if channels == 3 else rgb_to_grey(data["images"])
        color_indices, shape_indices = palette(colors, shapes)
        color_position = np.full(len(ALL_COLOR_NAMES), -1, dtype=np.int64)
        color_position[list(color_indices)] = np.arange(len(color_indices))
        shape_position = np.full(len(ALL_SHAPE_NAMES), -1, dtype=np.int64)
        shape_position[list(shape_indices)] = np.arange(len(shape_indices))
        self.labels = (
            color_position[data["colors"][:, 0]] * len(shape_indices) + shape_position[data["shapes"][:, 0]]
        )
        self.shuffle_captions = shuffle_captions

    def _caption(self, index: int) -> str:
        """The stored caption, or (shuffle_captions) the scene's objects named in a random order: another
        true sentence of the grammar ("A left of B" read as "B right of A"). Drawn from torch's global
        generator, which zoo checkpoints, so a resumed run names them as the uninterrupted one would."""
        data = self.data
        count = int(data["num_objects"][index])
        if not self.shuffle_captions or count == 1:
            return data["captions"][index]
        objects = [
            ShapeObject(int(data["shapes"][index, k]), int(data["colors"][index, k]), int(data["sizes"][index, k]),
                        *map(float, data["centers"][index, k]), float(data["scales"][index, k]), 0.0)
            for k in range(count)
        ]  # fmt: skip
        return caption_for([objects[k] for k in torch.randperm(count).tolist()])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        data = self.data
        return {
            "image": uint8_to_signed(self.images[index]),
            "caption": self._caption(index),
            "label": torch.tensor(self.labels[index], dtype=torch.int64),
            "num_objects": torch.tensor(data["num_objects"][index], dtype=torch.int64),
            "colors": torch.tensor(data["colors"][index], dtype=torch.int64),
            "shapes": torch.tensor(data["shapes"][index], dtype=torch.int64),
            "sizes": torch.tensor(data["sizes"][index], dtype=torch.int64),
            "instance_masks": torch.tensor(data["instance_masks"][index], dtype=torch.float32),
            "edges": torch.tensor(data["edges"][index], dtype=torch.float32).div_(255.0).unsqueeze(0),
            "centers": torch.tensor(data["centers"][index]),
            "segmentation": torch.from_numpy(
                segmentation_map(data["instance_masks"][index], data["shapes"][index])
            ),
            "keypoints": torch.from_numpy(self._keypoints(index)),
        }

    def _keypoints(self, index: int) -> np.ndarray:
        data = self.data
        objects = [
            (ALL_SHAPE_NAMES[data["shapes"][index, k]], *map(float, data["centers"][index, k]),
             float(data["scales"][index, k]), float(data["angles"][index, k]))
            for k in range(int(data["num_objects"][index]))
        ]  # fmt: skip
        return keypoint_map(objects, self.images.shape[1])


class ShapesDataModule(ZooDataModule):
    """Procedural images of 1-3 coloured shapes on black, with captions, labels, masks and edge maps.

    Each image shows `min_objects`..`max_objects` (default exactly one) non-overlapping shapes, with at
    least one clear pixel between them and the border: a circle, square or triangle (squares and
    triangles randomly rotated), in one of six colours (red, green, blue, yellow, purple, orange), small
    or large, at a random position. `colors` and `shapes` choose others from the full tables: the six and
    pink, cyan, brown (ALL_COLOR_NAMES); the three and star, hexagon, cross (ALL_SHAPE_NAMES), e.g.
    `--data.colors '[pink]' --data.shapes '[circle, star]'` for only pink circles and stars (concepts a
    model trained on the defaults never saw). Drawn at 4x and box-filtered down, so edges are anti-aliased at any
    `image_size` (default 32, at least 8). Splits: `num_train` / `num_val` / `num_test` images (default
    10,000 / 500 / 500) from independent seeds derived from `seed`, byte-identical for a seed and
    disjoint (val and test never repeat an image of an earlier split). Generating the default 11,000
    images at 32x32 takes about 1.3 s on one CPU core (about 5 s with max_objects=3, where placements
    get rejected); they are kept in memory as uint8 arrays (about 57 MB with masks and edges) and
    converted to tensors item by item.

    Item keys (K = max_objects; absent objects are -1, or zeros in masks):
    - `image` float32 (channels, S, S) in [-1, 1]; channels=1 gives luma
    - `caption` str: "a red circle"; with two objects "a red circle left of a small blue square"
      (left of / right of / above / below, along the dominant axis between the centres; near-diagonal
      pairs are never generated); with three "a red circle, a small blue square and a green triangle".
      With several objects, small ones are called small and large ones are unmarked.
    - `label` int64: class of the first object named, its colour's position in `colors` times the
      number of `shapes`, plus its shape's position in `shapes`; `class_names` ("red circle", "red
      square", ...) has one entry per colour and shape chosen, 18 by default
    - `num_objects` int64; `colors`, `shapes`, `sizes` int64 (K,), indices into the full tables
      ALL_COLOR_NAMES and ALL_SHAPE_NAMES (whatever was chosen; the defaults are their first entries, so
      also indices into COLOR_NAMES and SHAPE_NAMES) and SIZE_NAMES (0 small, 1 large)
    - `instance_masks` float32 (K, S, S) in {0, 1}
    - `edges` float32 (1, S, S) in [0, 1]: the objects' outlines, about one pixel wide (a ControlNet condition)
    - `segmentation` float32 (3, S, S): each object's mask in its shape's colour, circle red, square green,
      triangle blue (star yellow, hexagon magenta, cross cyan) (a ControlNet condition, `segmentation_map`)
    - `keypoints` float32 (3, S, S): bumps at each object's centre (red) and corners (green; a circle's
      four compass points), a pose analogue (a ControlNet condition, `keypoint_map`)
    - `centers` float32 (K, 2): each object's centre (x, y) in pixels

    Args:
        image_size: image side in pixels, at least 8; zoo.fit links model.image_size to it.
        channels: 3 (RGB) or 1 (luma); zoo.fit links model.in_channels to it.
        min_objects: fewest shapes in an image, at least 1.
        max_objects: most shapes in an image, at least min_objects.
        object_weights: relative frequencies of min_objects..max_objects shapes (one weight each);
            null: uniform.
        colors: colours drawn, a list or one name of ALL_COLOR_NAMES (+ pink, cyan, brown); null: six.
        shapes: shapes drawn, of ALL_SHAPE_NAMES (+ star, hexagon, cross); null: the first three.
        shuffle_captions: training split only: each time an image is read, its objects are named in a
            random order ("a red circle left of a blue square" or "a blue square right of a red circle"),
            so the text encoder learns that both say the same; val and test keep their fixed captions.
        num_train: training images.
        num_val: validation images.
        num_test: test images.
        seed: seed the three splits are rendered from, and of the training order.
    """

    modality = "image"

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 3,
        min_objects: int = 1,
        max_objects: int = 1,
        object_weights: list[float] | None = None,
        colors: list[str] | str | None = None,
        shapes: list[str] | str | None = None,
        shuffle_captions: bool = False,
        num_train: int = 10000,
        num_val: int = 500,
        num_test: int = 500,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters()  # recorded in checkpoints, so evaluation can rebuild the data
        check_image_args(image_size, channels, min_size=8)
        check_object_counts(min_objects, max_objects, object_weights)
        palette(colors, shapes)  # unknown names fail here, listing the known ones
        if min(num_train, num_val, num_test) < 1:
            raise DataError(
                f"num_train, num_val and num_test must be at least 1, got {num_train}, {num_val}, {num_test}"
            )
        self.image_size = image_size
        self.channels = channels
        self.min_objects = min_objects
        self.max_objects = max_objects
        self.object_weights = object_weights
        self.colors = None if colors is None else [colors] if isinstance(colors, str) else list(colors)
        self.shapes = None if shapes is None else [shapes] if isinstance(shapes, str) else list(shapes)
        self.shuffle_captions = shuffle_captions
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.class_names = class_names(self.colors, self.shapes)
        self.num_classes = len(self.class_names)

    def _render(self, num: int, split: int, seen: set[int]) -> dict[str, Any]:
        """`num` images from the split's own seed, dropping any image already in `seen` (then added to it)."""
        parts, have, round_ = [], 0, 0
        while have < num:
            data = render_shapes(
                num - have + (round_ > 0) * 8,
                image_size=self.image_size,
                min_objects=self.min_objects,
                max_objects=self.max_objects,
                object_weights=self.object_weights,
                seed=derived_seed(self.seed, split, round_),
                colors=self.colors,
                shapes=self.shapes,
            )
            keys = [hash(image.tobytes()) for image in data["images"]]
            fresh = np.array([key not in seen for key in keys], dtype=bool)
            keep = np.flatnonzero(fresh)[: num - have]
            parts.append(_take(data, keep))
            have += len(keep)
            round_ += 1
        data = _concat(parts) if len(parts) > 1 else parts[0]
        seen.update(hash(image.tobytes()) for image in data["images"])
        return data

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        seen: set[int] = set()
        splits = [
            self._render(num, split, seen)
            for split, num in enumerate((self.num_train, self.num_val, self.num_test))
        ]
        self.train_set, self.val_set, self.test_set = (
            ShapesDataset(
                data, self.channels, self.shuffle_captions and i == 0, colors=self.colors, shapes=self.shapes
            )
            for i, data in enumerate(splits)
        )


# --- concept folders: a few images of a new colour, captioned with a placeholder token ----------------

CONCEPT_TEMPLATE = "a {token} {shape}"


def write_concept_folder(
    out: str | Path,
    color: str,
    shapes: list[str] | None = None,
    *,
    num: int = 8,
    token: str = "<s1>",
    image_size: int = 32,
    seed: int = 0,
    template: str = CONCEPT_TEMPLATE,
    overwrite: bool = False,
) -> Path:
    """Write `num` images of one object each, in `color`, of the `shapes` (default: the three default
    shapes), as an `image_folder`: `0000.png`, `0001.png`, ... and `captions.csv` (header
    `file,caption`), each caption `template` with the colour word replaced by `token` ("a <s1>
    circle"; the template's fields are {token}, {shape} and {color}). Returns the folder.

    Read it back with `--data image_folder --data.root OUT --data.image_size IMAGE_SIZE`. Objects are
    placed, sized and rotated as in `render_shapes` (seeded by `seed`). `out` must be missing or
    empty; with `overwrite` the image files and captions files at its top level are deleted first
    (nothing else). Unknown colours or shapes, `num` < 1, an empty token or a template with other
    fields are DataErrors."""
    if not isinstance(color, str):
        raise DataError(f"write_concept_folder takes one colour name, got {color!r}")
    palette([color], shapes)  # unknown names fail here, listing the known ones
    if num < 1:
        raise DataError(f"a concept folder needs at least one image, got num={num}")
    if not token.strip():
        raise DataError("the concept's token must not be empty (e.g. '<s1>' or 'sks')")
    try:
        template.format(token=token, shape="circle", color=color)
    except (KeyError, IndexError, ValueError) as error:
        raise DataError(
            f"caption template {template!r} may only use {{token}}, {{shape}} and {{color}}: {error!r}"
        ) from None
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"concept folder '{out}' exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"concept folder '{out}' is not empty; choose another, or pass --overwrite "
                            f"(overwrite=True) to delete its images and captions files first")  # fmt: skip
        for path in out.iterdir():
            if path.is_file() and (is_image_file(path) or path.name in ("captions.csv", "captions.jsonl")):
                path.unlink()
    data = render_shapes(num, image_size=image_size, seed=seed, colors=[color], shapes=shapes)
    out.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(num - 1)))
    rows = []
    for i in range(num):
        name = f"{i:0{width}d}.png"
        Image.fromarray(data["images"][i]).save(out / name)
        shape = ALL_SHAPE_NAMES[data["shapes"][i, 0]]
        rows.append((name, template.format(token=token, shape=shape, color=color)))
    with open(out / "captions.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("file", "caption"))
        writer.writerows(rows)
    return out
