"""Image files: PNG files and grids from float tensors in [0, 1], the image file types zoo reads
(`IMAGE_EXTENSIONS`, for `image_folder`, `zoo.evaluate` folders and video frame folders alike), and
loading one image for editing."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

# What PIL reads and zoo accepts as an image file, lower case (suffixes compare case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def is_image_file(path: str | Path) -> bool:
    """An image by its suffix (any case), not a hidden file."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def find_image_files(folder: str | Path) -> list[Path]:
    """Image files under `folder` at any depth, sorted, skipping hidden files and folders."""
    found = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found.extend(Path(directory, name) for name in files if is_image_file(name))
    return sorted(found)


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        raise ValueError(
            f"expected images of shape (N, C, H, W) with C in 1, 3, 4; got {tuple(images.shape)}"
        )
    return images.detach().float().cpu().clamp(0, 1)


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> torch.Tensor:
    """One (C, H, W) grid; `nrow` images per row (default: as square as possible)."""
    images = _check_images(images)
    nrow = nrow or max(1, math.ceil(math.sqrt(len(images))))
    return make_grid(images, nrow=nrow, padding=padding, pad_value=1.0)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write `images` (N, C, H, W) in [0, 1] as one PNG grid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(image_grid(images, nrow), path)
    return path


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """Write one image (C, H, W) in [0, 1] to exactly `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(_check_images(image[None])[0], path)
    return path


def save_images(images: torch.Tensor, directory: str | Path, start: int = 0) -> list[Path]:
    """Write each image as `directory/000123.png`, numbered from `start`."""
    images = _check_images(images)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images, start=start):
        path = directory / f"{i:06d}.png"
        save_image(image, path)
        paths.append(path)
    return paths


def load_image(path: str | Path, size: int | None = None, channels: int = 3) -> torch.Tensor:
    """An image file as a (1, C, H, W) float tensor in [0, 1], resized (bilinear) to `size` x `size`.

    Raises ValueError naming the file when it is missing or cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor, resize

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image '{path}' does not exist")
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"image '{path}' cannot be read ({err}); is it a PNG/JPEG file?") from err
    tensor = pil_to_tensor(image).float().div(255)[None]
    if size is not None and tuple(tensor.shape[-2:]) != (size, size):
        tensor = resize(tensor, [size, size], antialias=True)
    return tensor
