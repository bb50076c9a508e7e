"""Video datamodules: `moving_shapes` and `moving_digits` (procedural clips, no files) and `video_folder`.

Items are dictionaries with `video` float32 (T, C, H, W) in [-1, 1], so batches are (B, T, C, H, W);
every datamodule exposes `frames` (T), `fps` (the rate clips are meant to play at), `image_size` and
`channels`. The procedural clips are drawn item by item from a seed derived from (seed, split, index):
deterministic, nothing held in memory, and as cheap as reading a file (8 frames of 32x32 take about
0.5 ms). `moving_shapes` reuses the drawing code of `shapes` (`shape_alpha`), so its objects look exactly
like the image datamodule's and an image model trained on `shapes` sees familiar frames.

Motion is straight-line at constant speed, reflected off the borders (a closed form, `bounce`). The
start is placed so that the motion the caption names holds for at least the first half of the clip
whenever the object's room allows, and always for the first step: a caption then describes what a
viewer sees first, and a clip never opens with a bounce.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from zoo.data import ZooDataModule
from zoo.errors import DataError, MissingDataError
from zoo.io.images import IMAGE_EXTENSIONS
from zoo.io.video import VideoFileError, count_video_frames, read_video_file

from ._images import check_fractions, check_image_args, derived_seed
from .image_folder import CAPTION_FILES, read_captions
from .shapes import CIRCUMRADIUS, COLOR_NAMES, COLOR_RGB, SCALE_RANGES, SHAPE_NAMES, SIZE_NAMES, shape_alpha

# Unit directions in image coordinates (x right, y down). The first four are the default vocabulary;
# `diagonal=True` adds the other four.
DIRECTION_NAMES: tuple[str, ...] = (
    "right", "left", "up", "down", "up-right", "up-left", "down-right", "down-left",
)  # fmt: skip
_H = 1 / math.sqrt(2)
DIRECTION_VECTORS = np.array(
    [(1, 0), (-1, 0), (0, -1), (0, 1), (_H, -_H), (-_H, -_H), (_H, _H), (-_H, _H)], dtype=np.float64
)
SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------------------ motion


def bounce(start: np.ndarray, velocity: np.ndarray, times: np.ndarray, low: Any, high: Any) -> np.ndarray:
    """Positions at `times` of points moving at `velocity` from `start`, reflected off `low` and `high`.

    The unfolded straight line folded back into [low, high] (a triangle wave of period 2 (high - low)),
    so bounces are exact whatever the speed. Arrays broadcast: e.g. start (K, 2), velocity (K, 2),
    times (T, 1, 1), low/high scalars or (K, 1) -> (T, K, 2).
    """
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    span = np.maximum(high - low, 1e-9)
    unfolded = np.mod(start - low + velocity * times, 2 * span)
    return low + np.where(unfolded <= span, unfolded, 2 * span - unfolded)


def start_position(rng: np.random.Generator, velocity: float, low: float, high: float, frames: int) -> float:
    """A start in [low, high] from which motion at `velocity` runs half the clip before a bounce, if it can.

    When the room is shorter than half the clip's travel, the start is the far end behind the motion,
    which gives the longest straight run there is (and at least the first step, if speed <= room).
    """
    travel = abs(velocity) * math.ceil((frames - 1) / 2)
    if velocity > 0:
        return float(rng.uniform(low, max(low, high - travel)))
    if velocity < 0:
        return float(rng.uniform(min(high, low + travel), high))
    return float(rng.uniform(low, high))


def direction_name(dx: float, dy: float, diagonal: bool = True) -> str:
    """The compass name (DIRECTION_NAMES) nearest to the direction (dx, dy), y pointing down."""
    count = 8 if diagonal else 4
    vectors = DIRECTION_VECTORS[:count]
    return DIRECTION_NAMES[int(np.argmax(vectors @ np.array([dx, dy], dtype=np.float64)))]


def _article(words: str) -> str:
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


# ------------------------------------------------------------------------------------ moving shapes


def render_moving_shapes(
    seed: int,
    *,
    frames: int = 8,
    image_size: int = 32,
    min_objects: int = 1,
    max_objects: int = 1,
    diagonal: bool = False,
    speed: tuple[float, float] = (0.03, 0.06),
    color_change: float = 0.0,
    size_change: float = 0.0,
) -> dict[str, Any]:
    """One clip of `shapes` objects moving in a straight line at constant speed and bouncing off the borders.

    Each object gets a shape, colour, size and angle as in `shapes`, a direction from DIRECTION_NAMES (the
    first 4, or all 8 with `diagonal`) and a speed drawn from `speed` (a fraction of `image_size` per
    frame). With probability `color_change` its colour fades linearly into another one over the clip; with
    probability `size_change` it grows from small to large or shrinks from large to small. Objects may
    pass over each other (later ones are drawn on top); masks are each object's own (amodal) footprint.
    An object bounces when its circumscribed circle, plus one clear pixel, meets the border, at its
    largest size over the clip (so a growing object never leaves the image either).

    Returns numpy arrays (K = max_objects; absent objects -1, or zeros in masks):
    `frames` uint8 (T, S, S, 3); `masks` uint8 (T, K, S, S) in {0, 1} (pixels at least half covered);
    `centers` float32 (T, K, 2) as (x, y) pixels; `scales` float32 (T, K); `shapes`, `colors`,
    `end_colors`, `sizes`, `end_sizes`, `directions` int64 (K,); `speeds` float32 (K,) pixels per frame;
    `num_objects` int; `caption` str ("a red circle moving right", "a red circle moving up,
    growing", "a red circle moving left, turning blue, and a green square moving down").
    """
    rng = np.random.default_rng(seed)
    size, k_max = image_size, max_objects
    count = int(rng.integers(min_objects, max_objects + 1))
    num_directions = 8 if diagonal else 4
    times = np.arange(frames, dtype=np.float64)
    progress = times / max(frames - 1, 1)  # 0 at the first frame, 1 at the last

    shapes, colors, end_colors, sizes, end_sizes, directions = np.full((6, k_max), -1, np.int64)
    speeds = np.full(k_max, -1.0, np.float32)
    centers = np.full((frames, k_max, 2), -1.0, np.float32)
    scales = np.full((frames, k_max), -1.0, np.float32)
    masks = np.zeros((frames, k_max, size, size), np.uint8)
    canvas = np.zeros((frames, size, size, 3), np.float64)  # black background, as `shapes`
    phrases = []
    for k in range(count):
        shape = int(rng.integers(len(SHAPE_NAMES)))
        color = int(rng.integers(len(COLOR_NAMES)))
        size_index = int(rng.integers(len(SIZE_NAMES)))
        angle = float(rng.uniform(0.0, 2 * math.pi)) if SHAPE_NAMES[shape] != "circle" else 0.0
        direction = int(rng.integers(num_directions))
        pixels_per_frame = float(rng.uniform(*speed)) * size
        end_color = color
        if rng.random() < color_change:
            end_color = int((color + rng.integers(1, len(COLOR_NAMES))) % len(COLOR_NAMES))
        end_size = size_index
        if rng.random() < size_change:
            end_size = 1 - size_index
        scale_start = float(rng.uniform(*SCALE_RANGES[size_index])) * size
        scale_end = (
            float(rng.uniform(*SCALE_RANGES[end_size])) * size if end_size != size_index else scale_start
        )
        scale_t = scale_start + (scale_end - scale_start) * progress

        reach = CIRCUMRADIUS[SHAPE_NAMES[shape]] * max(scale_start, scale_end) + 1.0
        low, high = reach, max(reach, size - reach)
        velocity = DIRECTION_VECTORS[direction] * pixels_per_frame
        start = np.array([start_position(rng, v, low, high, frames) for v in velocity])
        path = bounce(start, velocity, times[:, None], low, high)  # (T, 2)

        rgb = (
            COLOR_RGB[color].astype(np.float64)[None] * (1 - progress[:, None])
            + COLOR_RGB[end_color].astype(np.float64)[None] * progress[:, None]
        )
        for t in range(frames):
            alpha = shape_alpha(SHAPE_NAMES[shape], path[t, 0], path[t, 1], scale_t[t], angle, size) / 255.0
            canvas[t] = canvas[t] * (1 - alpha[..., None]) + alpha[..., None] * rgb[t]
            masks[t, k] = alpha >= 0.5

        shapes[k], colors[k], end_colors[k] = shape, color, end_color
        sizes[k], end_sizes[k], directions[k], speeds[k] = size_index, end_size, direction, pixels_per_frame
        centers[:, k], scales[:, k] = path, scale_t
        small = count > 1 and SIZE_NAMES[size_index] == "small"
        words = f"{'small ' if small else ''}{COLOR_NAMES[color]} {SHAPE_NAMES[shape]}"
        changes = []
        if end_color != color:
            changes.append(f"turning {COLOR_NAMES[end_color]}")
        if end_size != size_index:
            changes.append("growing" if end_size > size_index else "shrinking")
        phrase = f"{_article(words)} moving {DIRECTION_NAMES[direction]}"
        phrases.append(phrase + (", " + " and ".join(changes) if changes else ""))

    return {
        "frames": np.clip(np.rint(canvas), 0, 255).astype(np.uint8),
        "masks": masks,
        "centers": centers,
        "scales": scales,
        "shapes": shapes,
        "colors": colors,
        "end_colors": end_colors,
        "sizes": sizes,
        "end_sizes": end_sizes,
        "directions": directions,
        "speeds": speeds,
        "num_objects": count,
        "caption": join_phrases(phrases),
    }


def join_phrases(phrases: list[str]) -> str:
    """Objects joined by "and"; after a phrase with a change clause by ", and", so that "a red circle moving
    up, turning blue, and a green square moving left" does not read as the circle turning into a square."""
    text = phrases[0]
    for before, phrase in zip(phrases, phrases[1:], strict=False):
        text += (", and " if "," in before else " and ") + phrase
    return text


def _video_tensor(frames: np.ndarray, channels: int) -> torch.Tensor:
    """(T, H, W, C) uint8 -> float32 (T, channels, H, W) in [-1, 1]; RGB to grey as PIL's convert("L")."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).to(torch.float32)
    if channels == 1 and video.shape[1] == 3:
        video = (video * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True).round()
    elif channels == 3 and video.shape[1] == 1:
        video = video.expand(-1, 3, -1, -1)
    return video.div(127.5).sub(1.0).contiguous()


class MovingShapesDataset(Dataset):
    """`num` clips of `render_moving_shapes`, clip i drawn from derived_seed(seed, split, i) when asked for."""

    def __init__(self, num: int, seed: int, split: int, channels: int, **clip: Any) -> None:
        self.num, self.seed, self.split, self.channels, self.clip = num, seed, split, channels, clip

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num:
            raise IndexError(index)
        data = render_moving_shapes(derived_seed(self.seed, self.split, index), **self.clip)
        item = {
            "video": _video_tensor(data["frames"], self.channels),
            "caption": data["caption"],
            "label": torch.tensor(data["directions"][0], dtype=torch.int64),
            "masks": torch.from_numpy(data["masks"]).to(torch.float32),
            "centers": torch.from_numpy(data["centers"]),
            "speeds": torch.from_numpy(data["speeds"]),
            "num_objects": torch.tensor(data["num_objects"], dtype=torch.int64),
        }
        for key in ("shapes", "colors", "end_colors", "sizes", "end_sizes", "directions"):
            item[key] = torch.from_numpy(data[key])
        return item


class _VideoDataModule(ZooDataModule):
    """What every video datamodule checks and exposes: frames, fps, image_size, channels.

    Args:
        frames: frames per clip, at least 1; zoo.fit links model.frames to it.
        fps: the rate clips are meant to play at (nothing is resampled); zoo.fit links model.fps to it.
        image_size: frame side in pixels; zoo.fit links model.image_size to it.
        channels: 3 (RGB) or 1 (grey); zoo.fit links model.in_channels to it.
    """

    modality = "video"

    def __init__(
        self,
        frames: int,
        fps: float,
        image_size: int,
        channels: int,
        batch_size: int,
        num_workers: int,
        seed: int,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if frames < 1:
            raise DataError(f"frames must be at least 1, got {frames}")
        if not fps > 0:
            raise DataError(f"fps must be positive, got {fps}")
        self.frames = frames
        self.fps = float(fps)
        self.image_size = image_size
        self.channels = channels


def _check_counts(num_train: int, num_val: int, num_test: int) -> None:
    if min(num_train, num_val, num_test) < 1:
        raise DataError(
            f"num_train, num_val and num_test must be at least 1, got {num_train}, {num_val}, {num_test}"
        )


def _check_speed(speed: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(v) for v in speed)
    if not 0 <= low <= high:
        raise DataError(f"speed must be (low, high) with 0 <= low <= high, got {speed}")
    return low, high


class MovingShapesDataModule(_VideoDataModule):
    """Clips of the `shapes` objects moving in straight lines and bouncing off the borders, with captions.

    Each clip shows `min_objects`..`max_objects` (default one) objects: a circle, square or triangle in
    one of the six `shapes` colours, small or large, moving right / left / up / down (`diagonal=True`
    adds up-right, up-left, down-right, down-left) at `speed` (a range, as a fraction of `image_size`
    per frame; default 0.03-0.06, i.e. 1-2 pixels a frame at 32x32), bouncing off the borders. With
    probability `color_change` an object fades into another colour over the clip, with probability
    `size_change` it grows or shrinks between the `shapes` size classes. See `render_moving_shapes`.

    Defaults: 8 frames of 32x32 at 8 fps (one second). 32x32 is the `shapes` default, so a `vae`
    trained there encodes these frames as they are (a per-frame first stage for latent video models),
    and a 16x16 shape is only 4-8 pixels across, too few to tell a square from a circle. 8 frames keep a
    clip the size of 8 images, which lets a CPU model train on motion in minutes; at 1-2 pixels a frame
    an object still travels 7-14 pixels, clearly visible. Splits of `num_train` / `num_val` /
    `num_test` clips (default 5,000 / 256 / 256) from independent seeds derived from `seed`.

    Item keys (T frames, K = max_objects; absent objects -1, or zeros in masks):
    - `video` float32 (T, channels, S, S) in [-1, 1]; channels=1 gives luma
    - `caption` str: "a red circle moving right"; changes follow a comma ("a blue square moving up,
      turning red and growing"); several objects are joined by "and" (", and" after a change), small
      ones called small
    - `label` int64: the first object's direction, an index into `class_names` (the direction names)
    - `masks` float32 (T, K, S, S) in {0, 1}; `centers` float32 (T, K, 2) (x, y) pixels, the exact
      path (mask centroids fall on it); `speeds` float32 (K,) pixels per frame
    - `num_objects` int64; `shapes`, `colors`, `end_colors`, `sizes`, `end_sizes`, `directions` int64
      (K,), indices into SHAPE_NAMES, COLOR_NAMES, SIZE_NAMES, DIRECTION_NAMES

    Args:
        image_size: frame side in pixels, at least 16; zoo.fit links model.image_size to it.
        channels: 3 (RGB) or 1 (luma); zoo.fit links model.in_channels to it.
        min_objects: fewest moving shapes in a clip, at least 1.
        max_objects: most moving shapes in a clip, at least min_objects.
        diagonal: add the four diagonal directions to right, left, up and down (the `label` classes).
        speed: (low, high) range of an object's speed, as a fraction of image_size per frame.
        color_change: probability an object fades into another colour over the clip, in [0, 1].
        size_change: probability an object grows or shrinks to the other size over the clip, in [0, 1].
        num_train: training clips.
        num_val: validation clips.
        num_test: test clips.
        seed: seed the clips are drawn from, and of the training order.
    """

    def __init__(
        self,
        frames: int = 8,
        fps: float = 8.0,
        image_size: int = 32,
        channels: int = 3,
        min_objects: int = 1,
        max_objects: int = 1,
        diagonal: bool = False,
        speed: tuple[float, float] = (0.03, 0.06),
        color_change: float = 0.0,
        size_change: float = 0.0,
        num_train: int = 5000,
        num_val: int = 256,
        num_test: int = 256,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(frames, fps, image_size, channels, batch_size, num_workers, seed)
        self.save_hyperparameters()  # recorded in checkpoints, so evaluation can rebuild the data
        # 16 pixels is the least at which a large triangle, with its clear pixel, still has room to move.
        check_image_args(image_size, channels, min_size=16)
        if not 1 <= min_objects <= max_objects:
            raise DataError(f"need 1 <= min_objects <= max_objects, got {min_objects} and {max_objects}")
        for name, p in (("color_change", color_change), ("size_change", size_change)):
            if not 0.0 <= p <= 1.0:
                raise DataError(f"{name} is a probability in [0, 1], got {p}")
        _check_counts(num_train, num_val, num_test)
        self.clip = dict(
            frames=frames,
            image_size=image_size,
            min_objects=min_objects,
            max_objects=max_objects,
            diagonal=diagonal,
            speed=_check_speed(speed),
            color_change=color_change,
            size_change=size_change,
        )
        self.counts = (num_train, num_val, num_test)
        self.class_names = list(DIRECTION_NAMES[: 8 if diagonal else 4])
        self.num_classes = len(self.class_names)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set, self.val_set, self.test_set = (
            MovingShapesDataset(num, self.seed, split, self.channels, **self.clip)
            for split, num in enumerate(self.counts)
        )


# ------------------------------------------------------------------------------------ moving digits


def load_digit_images(digit_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """scikit-learn's 1,797 digits resized to digit_size x digit_size: float32 (N, s, s) in [0, 1], labels (N,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    originals = torch.from_numpy(digits.images).to(torch.float32).div(16.0).unsqueeze(1)
    resized = F.interpolate(
        originals, size=(digit_size, digit_size), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.clamp(0.0, 1.0)[:, 0].contiguous(), digits.target.astype(np.int64)


def render_moving_digits(
    seed: int,
    digits: torch.Tensor,
    labels: np.ndarray,
    *,
    frames: int = 8,
    image_size: int = 32,
    min_digits: int = 1,
    max_digits: int = 2,
    speed: tuple[float, float] = (0.03, 0.06),
) -> dict[str, Any]:
    """One Moving-MNIST-style clip: digits from `digits` (N, s, s) in [0, 1] bouncing on a black canvas.

    Each digit moves in a uniformly random direction at a speed drawn from `speed` (fraction of the
    canvas per frame); its top-left corner bounces inside [0, S - s], so it is always wholly on the
    canvas, at whole-pixel positions (the digit is shifted, never resampled). Overlaps take the maximum,
    as Moving MNIST does. Returns `frames` float32 (T, S, S) in [0, 1], `masks` uint8 (T, K, S, S) (ink
    >= 0.5), `positions` float32 (T, K, 2) (x, y) of the top-left corner, `digits` and `directions`
    int64 (K,) (-1 absent; directions are the nearest of the 8 compass names), `num_digits`, `caption`
    ("a digit 3 moving up-left and a digit 7 moving down").
    """
    rng = np.random.default_rng(seed)
    k_max, size, digit_size = max_digits, image_size, digits.shape[-1]
    count = int(rng.integers(min_digits, max_digits + 1))
    times = np.arange(frames, dtype=np.float64)
    canvas = torch.zeros(frames, size, size)
    masks = np.zeros((frames, k_max, size, size), np.uint8)
    positions = np.full((frames, k_max, 2), -1.0, np.float32)
    classes, directions = np.full(k_max, -1, np.int64), np.full(k_max, -1, np.int64)
    phrases = []
    high = float(size - digit_size)
    for k in range(count):
        index = int(rng.integers(len(labels)))
        angle = float(rng.uniform(0, 2 * math.pi))
        velocity = np.array([math.cos(angle), math.sin(angle)]) * float(rng.uniform(*speed)) * size
        start = np.array([start_position(rng, v, 0.0, high, frames) for v in velocity])
        path = bounce(start, velocity, times[:, None], 0.0, high)
        corners = np.clip(np.rint(path), 0, high).astype(np.int64)
        for t, (x, y) in enumerate(corners):
            window = canvas[t, y : y + digit_size, x : x + digit_size]
            canvas[t, y : y + digit_size, x : x + digit_size] = torch.maximum(window, digits[index])
            masks[t, k, y : y + digit_size, x : x + digit_size] = (digits[index] >= 0.5).numpy()
        positions[:, k] = corners
        classes[k] = labels[index]
        name = direction_name(*velocity)
        directions[k] = DIRECTION_NAMES.index(name)
        phrases.append(f"a digit {labels[index]} moving {name}")
    return {
        "frames": canvas.numpy(),
        "masks": masks,
        "positions": positions,
        "digits": classes,
        "directions": directions,
        "num_digits": count,
        "caption": " and ".join(phrases),
    }


class MovingDigitsDataset(Dataset):
    """`num` clips of `render_moving_digits` over a pool of digits, clip i from derived_seed(seed, split, i)."""

    def __init__(
        self,
        num: int,
        seed: int,
        split: int,
        channels: int,
        digits: torch.Tensor,
        labels: np.ndarray,
        **clip: Any,
    ) -> None:
        self.num, self.seed, self.split, self.channels = num, seed, split, channels
        self.digits, self.labels, self.clip = digits, labels, clip

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num:
            raise IndexError(index)
        seed = derived_seed(self.seed, self.split, index)
        data = render_moving_digits(seed, self.digits, self.labels, **self.clip)
        video = torch.from_numpy(data["frames"]).unsqueeze(1).mul(2.0).sub(1.0)
        return {
            "video": video.expand(-1, self.channels, -1, -1).contiguous(),
            "caption": data["caption"],
            "label": torch.tensor(data["digits"][0], dtype=torch.int64),
            "masks": torch.from_numpy(data["masks"]).to(torch.float32),
            "positions": torch.from_numpy(data["positions"]),
            "digits": torch.from_numpy(data["digits"]),
            "directions": torch.from_numpy(data["directions"]),
            "num_digits": torch.tensor(data["num_digits"], dtype=torch.int64),
        }


class MovingDigitsDataModule(_VideoDataModule):
    """Moving-MNIST-style clips of scikit-learn's handwritten digits bouncing on a black canvas.

    `min_digits`..`max_digits` (default 1-2) digits, each resized once from 8x8 to `digit_size` (default
    12) as in `digits`, move in random directions at `speed` (fraction of `image_size` per frame, default
    0.03-0.06) and bounce so that they always stay wholly on the canvas; overlaps take the maximum.
    Defaults: 8 frames of 32x32 at 8 fps, grey (channels=3 repeats it). The digits themselves are split
    like `digits` (stratified, `val_fraction` / `test_fraction` of the 1,797), so validation clips show
    handwriting never seen in training; `num_train` / `num_val` / `num_test` clips (default 5,000 / 256 /
    256) are drawn from per-clip seeds derived from `seed`.

    Item keys (K = max_digits; absent digits -1, or zeros in masks): `video` float32 (T, channels, S, S)
    in [-1, 1]; `caption` str ("a digit 3 moving up-left and a digit 7 moving down", directions the
    nearest compass names); `label` int64, the first digit (`class_names` "0" ... "9"); `digits`,
    `directions` int64 (K,); `num_digits` int64; `masks` float32 (T, K, S, S) in {0, 1} (ink >= 0.5);
    `positions` float32 (T, K, 2), whole-pixel (x, y) of each digit's top-left corner.

    Args:
        channels: 1 (grey) or 3 (the grey repeated); zoo.fit links model.in_channels to it.
        digit_size: side the 8x8 digits are resized to, from 1 to image_size.
        min_digits: fewest digits in a clip, at least 1.
        max_digits: most digits in a clip, at least min_digits.
        speed: (low, high) range of a digit's speed, as a fraction of image_size per frame.
        num_train: training clips.
        num_val: validation clips.
        num_test: test clips.
        val_fraction: fraction of the 1,797 digits that only validation clips show, in (0, 1).
        test_fraction: fraction only test clips show, in [0, 1); 0: test clips show the validation digits.
        seed: seed of the digit split and the clips, and of the training order.
    """

    def __init__(
        self,
        frames: int = 8,
        fps: float = 8.0,
        image_size: int = 32,
        channels: int = 1,
        digit_size: int = 12,
        min_digits: int = 1,
        max_digits: int = 2,
        speed: tuple[float, float] = (0.03, 0.06),
        num_train: int = 5000,
        num_val: int = 256,
        num_test: int = 256,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(frames, fps, image_size, channels, batch_size, num_workers, seed)
        self.save_hyperparameters()  # recorded in checkpoints, so evaluation can rebuild the data
        check_image_args(image_size, channels)
        check_fractions(val_fraction, test_fraction)
        if not 1 <= digit_size <= image_size:
            raise DataError(f"digit_size must be in [1, image_size={image_size}], got {digit_size}")
        if not 1 <= min_digits <= max_digits:
            raise DataError(f"need 1 <= min_digits <= max_digits, got {min_digits} and {max_digits}")
        _check_counts(num_train, num_val, num_test)
        self.digit_size = digit_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.clip = dict(
            frames=frames,
            image_size=image_size,
            min_digits=min_digits,
            max_digits=max_digits,
            speed=_check_speed(speed),
        )
        self.counts = (num_train, num_val, num_test)
        self.class_names = [str(d) for d in range(10)]
        self.num_classes = 10

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.model_selection import train_test_split

        digits, labels = load_digit_images(self.digit_size)
        indices, random_state = np.arange(len(labels)), self.seed % 2**32
        held_out = self.val_fraction + self.test_fraction
        train, rest = train_test_split(
            indices, test_size=held_out, stratify=labels, random_state=random_state
        )
        if self.test_fraction > 0:
            val, test = train_test_split(
                rest,
                test_size=self.test_fraction / held_out,
                stratify=labels[rest],
                random_state=random_state,
            )
        else:
            val, test = rest, rest
        pools = [np.sort(pool) for pool in (train, val, test)]
        self.train_set, self.val_set, self.test_set = (
            MovingDigitsDataset(
                num,
                self.seed,
                split,
                self.channels,
                digits[torch.from_numpy(pool)],
                labels[pool],
                **self.clip,
            )
            for split, (num, pool) in enumerate(zip(self.counts, pools, strict=True))
        )


# ------------------------------------------------------------------------------------- video folder

VIDEO_EXTENSIONS = (".gif", ".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
# a frame is any image file zoo reads, except a GIF: that is a clip of its own
FRAME_EXTENSIONS = tuple(e for e in IMAGE_EXTENSIONS if e not in VIDEO_EXTENSIONS)


class BadVideoError(DataError, RuntimeError):
    """A video file or frame folder that cannot be read; the message names it."""


def _natural_key(path: Path) -> list[Any]:
    """frame2.png before frame10.png: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def find_videos(root: Path) -> list[Path]:
    """Video files and frame folders (folders holding image files) under `root`, sorted; hidden ones skipped."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        visible = [name for name in files if not name.startswith(".")]
        found.extend(Path(directory, n) for n in visible if Path(n).suffix.lower() in VIDEO_EXTENSIONS)
        if Path(directory) != root and any(Path(n).suffix.lower() in FRAME_EXTENSIONS for n in visible):
            found.append(Path(directory))
    return sorted(found)


def frame_files(folder: Path) -> list[Path]:
    """The frames of a frame folder in natural order (frame2 before frame10)."""
    names = [
        p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS and not p.name.startswith(".")
    ]
    return sorted(names, key=_natural_key)


def _load_frame(path: Path, mode: str) -> np.ndarray:
    with Image.open(path) as image:
        array = np.asarray(image.convert(mode))
    return array[..., None] if array.ndim == 2 else array


def read_frames(
    video: Path, channels: int, start: int = 0, stop: int | None = None, step: int = 1
) -> torch.Tensor:
    """Frames start:stop:step of a video file or frame folder as uint8 (T, C, H, W)."""
    if video.is_dir():
        mode = "L" if channels == 1 else "RGB"
        files = frame_files(video)[start:stop:step]
        frames = []
        for file in files:
            try:
                frames.append(_load_frame(file, mode))
            except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ...
                raise BadVideoError(f"cannot read frame '{file}': {type(error).__name__}: {error}") from error
        shapes = {frame.shape for frame in frames}
        if len(shapes) > 1:
            raise BadVideoError(f"frames in '{video}' differ in size: {sorted(shapes)}")
        return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    try:
        clip, _ = read_video_file(video, channels, stop=stop)
    except VideoFileError as error:
        raise BadVideoError(str(error)) from error
    return clip[start:stop:step]


def count_frames(video: Path) -> int:
    """The number of frames of a video file or frame folder, decoding each once (and keeping none) so
    that an unreadable file shows up now."""
    if not video.is_dir():
        try:
            return count_video_frames(video)
        except VideoFileError as error:
            raise BadVideoError(str(error)) from error
    sizes = set()
    files = frame_files(video)
    for file in files:
        try:
            with Image.open(file) as image:
                image.load()
                sizes.add(image.size)
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ...
            raise BadVideoError(f"cannot read frame '{file}': {type(error).__name__}: {error}") from error
    if len(sizes) > 1:
        raise BadVideoError(f"frames in '{video}' differ in size: {sorted(sizes)}")
    return len(files)


class VideoFolderDataset(Dataset):
    """Clips of `frames` frames, every `frame_stride`-th, from videos; a random start when `random_start`."""

    def __init__(
        self,
        videos: list[Path],
        lengths: list[int],
        *,
        frames: int,
        frame_stride: int,
        random_start: bool,
        image_size: int,
        channels: int,
        captions: list[str] | None = None,
    ) -> None:
        self.videos, self.lengths, self.captions = videos, lengths, captions
        self.frames, self.frame_stride, self.random_start = frames, frame_stride, random_start
        self.image_size, self.channels = image_size, channels

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        span = (self.frames - 1) * self.frame_stride + 1
        latest = self.lengths[index] - span
        # The global torch RNG: seeded by seed_everything, per worker by the loader, and saved in zoo's
        # checkpoints, so random starts repeat and resume exactly.
        start = int(torch.randint(latest + 1, ()).item()) if self.random_start and latest > 0 else 0
        clip = read_frames(self.videos[index], self.channels, start, start + span, self.frame_stride)
        clip = TF.resize(clip, [self.image_size], antialias=True)  # the short side
        clip = TF.center_crop(clip, [self.image_size, self.image_size])
        item: dict[str, Any] = {"video": clip.to(torch.float32).div(127.5).sub(1.0).clamp(-1.0, 1.0)}
        if self.captions is not None:
            item["caption"] = self.captions[index]
        return item


class VideoFolderDataModule(_VideoDataModule):
    """Clips from a folder of videos: video files, and/or folders of frames (PNG/JPEG/BMP/WebP sequences).

    Under `root`, at any depth, every video file (.gif, .mp4, .avi, .mov, .mkv, .webm, .m4v, .mpg,
    .mpeg) is one video, and so is every folder holding frame images (in natural order: frame2 before
    frame10). GIFs and frame folders are read with PIL alone; the other formats need PyAV (`pip install
    av`), and without it they are an error naming the file (the installed torchvision, 0.29, has no
    video reader any more).

    A clip is `frames` frames, every `frame_stride`-th (default 1), starting at a random frame in the
    training split when `random_start` (default True; validation and test clips start at frame 0, so
    they are the same at every evaluation). Videos shorter than a clip's span ((frames - 1) *
    frame_stride + 1) are skipped with one warning naming them. Frames are decoded as RGB (channels=3)
    or grey (channels=1), the short side resized to `image_size` (default 32) and centre-cropped. Time is
    not resampled: `fps` (default 8) is the rate the clips are meant to play at.

    Captions: as `image_folder`: `captions_file`, or `captions.csv` / `captions.jsonl` at the root, with
    `file` the video's path (a file or a frame folder) relative to `root`. `setup()` decodes every video
    once: an unreadable file (or frame) is a `BadVideoError` naming it, or with `skip_bad_files=True` is
    skipped with a warning. The split is a seeded permutation of the sorted videos (`val_fraction`
    default 0.1; `test_fraction` default 0, when the test split is the validation split).

    Item keys: `video` float32 (frames, channels, S, S) in [-1, 1]; `caption` str with captions.

    Args:
        root: the folder of video files and frame folders.
        frames: frames per clip; zoo.fit links model.frames to it.
        fps: the rate clips are meant to play at (time is not resampled); zoo.fit links model.fps to it.
        image_size: side in pixels (short side resized, centre-cropped); zoo.fit links model.image_size to it.
        frame_stride: take every frame_stride-th frame, at least 1.
        random_start: start training clips at a random frame (validation and test clips start at 0).
        captions_file: a .csv or .jsonl of captions; null: captions.csv or captions.jsonl in root, if there.
        val_fraction: fraction of the videos held out for validation (at least one), in (0, 1).
        test_fraction: fraction held out for testing, in [0, 1); 0: the test split is the validation split.
        skip_bad_files: skip unreadable videos with a warning instead of failing in setup().
        seed: seed of the split and of the training order.
    """

    def __init__(
        self,
        root: str,
        frames: int = 8,
        fps: float = 8.0,
        image_size: int = 32,
        channels: int = 3,
        frame_stride: int = 1,
        random_start: bool = True,
        captions_file: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        skip_bad_files: bool = False,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(frames, fps, image_size, channels, batch_size, num_workers, seed)
        self.save_hyperparameters()  # recorded in checkpoints, so evaluation can rebuild the data
        check_image_args(image_size, channels)
        check_fractions(val_fraction, test_fraction)
        if frame_stride < 1:
            raise DataError(f"frame_stride must be at least 1, got {frame_stride}")
        self.root = Path(root).expanduser()
        self.frame_stride, self.random_start = frame_stride, random_start
        self.captions_file = captions_file
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.skip_bad_files = skip_bad_files
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise MissingDataError(f"video_folder root '{self.root}' {what}")
        self.videos = find_videos(self.root)
        if not self.videos:
            raise MissingDataError(
                f"no videos found under video_folder root '{self.root}'; expected video files "
                f"({', '.join(VIDEO_EXTENSIONS)}) or folders of frames ({', '.join(FRAME_EXTENSIONS)}); frames "
                "lying in the root itself are not a video: give each video's frames a folder of its own"
            )

    def _captions(self, videos: list[Path]) -> list[str] | None:
        if self.captions_file is not None:
            path = Path(self.captions_file).expanduser()
            if not path.is_file() and not path.is_absolute() and (self.root / path).is_file():
                path = self.root / path
            if not path.is_file():
                raise MissingDataError(
                    f"captions_file '{self.captions_file}' not found (also tried under '{self.root}')"
                )
        else:
            present = [self.root / name for name in CAPTION_FILES if (self.root / name).is_file()]
            if len(present) > 1:
                raise DataError(f"video_folder root '{self.root}' has both {CAPTION_FILES}; keep one")
            if not present:
                return None
            path = present[0]
        by_file = read_captions(path)
        relative = [video.relative_to(self.root).as_posix() for video in videos]
        missing = [name for name in relative if name not in by_file]
        if missing:
            raise DataError(
                f"{len(missing)} video(s) have no caption in '{path}', first: "
                f"{', '.join(repr(name) for name in missing[:5])}; every video needs one when captions are used"
            )
        return [by_file[name] for name in relative]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        videos = list(self.videos)
        captions = self._captions(videos)

        def check(video: Path) -> int | str:
            try:
                return count_frames(video)
            except BadVideoError as error:
                return str(error)

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # decoders release the GIL
            results = list(pool.map(check, videos))
        bad = [i for i, result in enumerate(results) if isinstance(result, str)]
        if bad and not self.skip_bad_files:
            names = ", ".join(f"'{videos[i]}'" for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
            more = f" ({len(bad)} unreadable videos in all: {names})" if len(bad) > 1 else ""
            raise BadVideoError(
                f"{results[bad[0]]}{more}. Replace or delete it, or pass skip_bad_files=True "
                "(--data.skip_bad_files true) to skip unreadable videos with a warning."
            )
        span = (self.frames - 1) * self.frame_stride + 1
        short = [i for i, r in enumerate(results) if isinstance(r, int) and r < span]
        if bad:
            warnings.warn(
                f"skipping {len(bad)} unreadable video(s): {'; '.join(results[i] for i in bad)}", stacklevel=2
            )
        if short:
            warnings.warn(
                f"skipping {len(short)} video(s) shorter than a clip's {span} frames (frames={self.frames}, "
                f"frame_stride={self.frame_stride}): " + ", ".join(str(videos[i]) for i in short),
                stacklevel=2,
            )
        keep = [i for i, r in enumerate(results) if isinstance(r, int) and r >= span]
        if len(keep) < 2:
            raise DataError(
                f"video_folder root '{self.root}' has {len(keep)} readable video(s) of at least {span} frames; "
                "need at least 2 to split"
            )
        order = np.random.default_rng(self.seed % 2**64).permutation(len(keep))
        num_val = max(1, round(len(keep) * self.val_fraction))
        num_test = max(1, round(len(keep) * self.test_fraction)) if self.test_fraction > 0 else 0
        if num_val + num_test >= len(keep):
            raise DataError(
                f"{len(keep)} videos are too few for val_fraction={self.val_fraction} and "
                f"test_fraction={self.test_fraction}: no training videos would be left"
            )

        def dataset(indices: np.ndarray, train: bool) -> VideoFolderDataset:
            chosen = [keep[i] for i in sorted(indices.tolist())]
            return VideoFolderDataset(
                [videos[i] for i in chosen],
                [int(results[i]) for i in chosen],
                frames=self.frames,
                frame_stride=self.frame_stride,
                random_start=self.random_start and train,
                image_size=self.image_size,
                channels=self.channels,
                captions=[captions[i] for i in chosen] if captions is not None else None,
            )

        self.train_set = dataset(order[num_val + num_test :], train=True)
        self.val_set = dataset(order[:num_val], train=False)
        self.test_set = (
            dataset(order[num_val : num_val + num_test], train=False) if num_test else self.val_set
        )
