"""Helpers shared by the datamodules: argument checks, uint8 -> [-1, 1] conversion, seeds, stable splits."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from zoo.errors import DataError


def check_image_args(image_size: int, channels: int, *, min_size: int = 1) -> None:
    if image_size < min_size:
        raise DataError(f"image_size must be at least {min_size}, got {image_size}")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise DataError(
            f"test_fraction must be in [0, 1) and val_fraction + test_fraction below 1, "
            f"got val_fraction={val_fraction}, test_fraction={test_fraction}"
        )


def derived_seed(seed: int, *keys: int) -> int:
    """A 64-bit seed drawn from (seed, *keys): independent streams for the splits of one seed."""
    return int(np.random.SeedSequence([seed % 2**64, *keys]).generate_state(1, np.uint64)[0])


def stable_split(key: str, val_fraction: float, test_fraction: float) -> str:
    """ "train", "val" or "test" for an item named `key` (a file's relative path, a clip's id), from a
    hash of the name: the same on every machine and for every seed, and unchanged when items are
    added or removed."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "test" if bucket < test_fraction else "val" if bucket < test_fraction + val_fraction else "train"


def uint8_to_signed(array: np.ndarray) -> torch.Tensor:
    """(H, W, C) or (H, W) uint8 -> float32 (C, H, W) in [-1, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(-1)
    return tensor.permute(2, 0, 1).to(torch.float32).div_(127.5).sub_(1.0)


def rgb_to_grey(images: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (..., 1) uint8 luma (ITU-R 601, as PIL's convert("L"))."""
    weights = np.array([299, 587, 114], dtype=np.uint32)
    luma = (images.astype(np.uint32) @ weights + 500) // 1000
    return luma.astype(np.uint8)[..., None]
