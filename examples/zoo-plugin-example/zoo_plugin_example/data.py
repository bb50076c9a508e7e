"""`stripes`: 16x16 images of horizontal or vertical stripes in random colours."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from zoo.data import ZooDataModule


class StripesDataset(Dataset):
    def __init__(self, num: int, image_size: int, channels: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 2, (num,), generator=g)
        colours = torch.rand(num, channels, 2, generator=g) * 2 - 1
        stripe = (torch.arange(image_size) // 2) % 2  # 0 0 1 1 0 0 ...
        images = []
        for label, colour in zip(self.labels, colours, strict=True):
            pattern = (
                stripe[:, None].expand(image_size, image_size)
                if label == 0
                else stripe[None, :].expand(image_size, image_size)
            )
            images.append(torch.where(pattern.bool(), colour[:, 1, None, None], colour[:, 0, None, None]))
        self.images = torch.stack(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "label": self.labels[i]}


class StripesDataModule(ZooDataModule):
    modality = "image"
    class_names = ["horizontal", "vertical"]
    num_classes = 2

    def __init__(self, image_size: int = 16, channels: int = 3, num_train: int = 512, num_val: int = 64,
                 batch_size: int = 32, num_workers: int = 0, seed: int = 0) -> None:  # fmt: skip
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.image_size, self.channels = image_size, channels
        self.num_train, self.num_val = num_train, num_val

    def setup(self, stage: str | None = None) -> None:
        self.train_set = StripesDataset(self.num_train, self.image_size, self.channels, self.seed)
        self.val_set = StripesDataset(self.num_val, self.image_size, self.channels, self.seed + 1)
        self.test_set = self.val_set
