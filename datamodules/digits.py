"""scikit-learn's handwritten digits (8x8, shipped with the package, no network), resized for image models."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, Subset

from zoo.data import ZooDataModule

from ._images import check_fractions, check_image_args

CLASS_NAMES = [str(d) for d in range(10)]


class DigitsDataset(Dataset):
    """All 1,797 digits as batch dictionaries; the splits are `Subset`s of it (their `indices` are sklearn's)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, channels: int) -> None:
        self.images = images  # (N, 1, S, S) float32 in [-1, 1]
        self.labels = labels
        self.channels = channels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        label = int(self.labels[index])
        return {
            "image": self.images[index].repeat(self.channels, 1, 1),
            "label": torch.tensor(label, dtype=torch.int64),
            "caption": f"a handwritten digit {label}",
        }


class DigitsDataModule(ZooDataModule):
    """The 1,797 real handwritten digits of scikit-learn (`sklearn.datasets.load_digits`), 0-9.

    The originals are 8x8 with 17 grey levels (0-16), bright ink on a dark background; they are resized
    to `image_size` (default 32) with bilinear, antialiased interpolation and scaled to [-1, 1]. A
    seeded split stratified by digit: with the default fractions 1,437 train / 180 val / 180 test images
    (`val_fraction`, `test_fraction`; with test_fraction=0 the test split is the validation split).

    Item keys: `image` float32 (channels, S, S) in [-1, 1] (channels=3 repeats the grey channel),
    `label` int64 0-9 (`class_names` "0" ... "9"), `caption` str "a handwritten digit 3".

    Args:
        image_size: side in pixels the 8x8 digits are resized to; zoo.fit links model.image_size to it.
        channels: 1 (grey) or 3 (the grey repeated); zoo.fit links model.in_channels to it.
        val_fraction: fraction of the 1,797 digits held out for validation, in (0, 1).
        test_fraction: fraction held out for testing, in [0, 1); 0: the test split is the validation split.
        seed: seed of the stratified split and of the training order.
    """

    modality = "image"

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 1,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters()  # recorded in checkpoints, so evaluation can rebuild the data
        check_image_args(image_size, channels)
        check_fractions(val_fraction, test_fraction)
        self.image_size = image_size
        self.channels = channels
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.class_names = list(CLASS_NAMES)
        self.num_classes = len(CLASS_NAMES)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        digits = load_digits()
        originals = torch.from_numpy(digits.images).to(torch.float32).div(16.0).unsqueeze(1)  # (N, 1, 8, 8)
        resized = F.interpolate(
            originals,
            size=(self.image_size, self.image_size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        images = resized.clamp(0.0, 1.0).mul(2.0).sub(1.0).contiguous()
        labels = torch.from_numpy(digits.target).to(torch.int64)
        dataset = DigitsDataset(images, labels, self.channels)

        indices = np.arange(len(labels))
        random_state = self.seed % 2**32
        held_out = self.val_fraction + self.test_fraction
        train, rest = train_test_split(
            indices, test_size=held_out, stratify=digits.target, random_state=random_state
        )
        if self.test_fraction > 0:
            val, test = train_test_split(
                rest,
                test_size=self.test_fraction / held_out,
                stratify=digits.target[rest],
                random_state=random_state,
            )
        else:
            val, test = rest, None
        self.train_set = Subset(dataset, sorted(train.tolist()))
        self.val_set = Subset(dataset, sorted(val.tolist()))
        self.test_set = Subset(dataset, sorted(test.tolist())) if test is not None else self.val_set
