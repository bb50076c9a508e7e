"""The datamodule contract: batch dictionaries, splits and loaders that resume mid-epoch exactly.

Every datamodule in `zoo.datamodules` (and in third-party plugins) extends `ZooDataModule`. It
builds three datasets in `setup()` whose items are dictionaries with the keys of DESIGN.md
(`image` in [-1, 1], `label`, `caption`, ...) and gets its loaders from `make_dataloader`, which
returns a `ResumableDataLoader`: shuffled by (seed, epoch), sharded over DDP ranks by itself, and
able to skip what an interrupted epoch already used, so resuming from `last.ckpt` continues
with exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from zoo.errors import DataError, MissingDataError

__all__ = ["DataError", "MissingDataError", "ResumableDataLoader", "ResumableSampler", "ZooDataModule"]

MODALITIES = ("image", "video", "audio", "text")


class ResumableSampler(DistributedSampler):
    """A `DistributedSampler` that also works without DDP and can start part-way into an epoch.

    Being a `DistributedSampler`, Lightning leaves it in place instead of wrapping it, so the
    order (a permutation seeded by seed + epoch, then every world_size-th index) is the same
    whether or not a run is resumed.
    """

    def __init__(self, dataset: Dataset, *, shuffle: bool, seed: int, drop_last: bool = False) -> None:
        if dist.is_available() and dist.is_initialized():
            super().__init__(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        else:
            super().__init__(dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.start_index = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())[self.start_index :]
        self.start_index = 0  # only the first epoch after a resume starts part-way
        return iter(indices)


class ResumableDataLoader(DataLoader):
    """A DataLoader with `state_dict`/`load_state_dict`, which Lightning saves in every checkpoint.

    Lightning does not prefetch from loaders that have a length, so the number of batches this
    loader has yielded is the number the training loop has consumed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches_yielded = 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler = self.sampler
        skipped = sampler.start_index // self.batch_size if isinstance(sampler, ResumableSampler) else 0
        self._batches_yielded = skipped
        for batch in super().__iter__():
            self._batches_yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        epoch = self.sampler.epoch if isinstance(self.sampler, ResumableSampler) else 0
        return {"epoch": epoch, "batches_yielded": self._batches_yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not isinstance(self.sampler, ResumableSampler):
            return
        batches = int(state.get("batches_yielded", 0))
        if 0 < batches < len(self):  # an epoch that ended needs no skipping
            self.sampler.set_epoch(int(state.get("epoch", 0)))
            self.sampler.start_index = batches * self.batch_size


class ZooDataModule(L.LightningDataModule):
    """Base class of zoo datamodules.

    Subclasses set the class attribute `modality` and implement `setup()` to fill
    `self.train_set`, `self.val_set` and `self.test_set` with datasets of batch dictionaries.
    Image datamodules expose `image_size` and `channels`; labelled ones `num_classes` and
    `class_names`.

    Args:
        batch_size: items per batch, per process under DDP.
        num_workers: DataLoader worker processes; 0 loads in the main process.
        seed: seed of the training order (a new permutation each epoch).
    """

    modality: ClassVar[str] = "image"
    num_classes: int = 0  # labelled datamodules set these; a class-conditional family links to them
    class_names: list[str] = []  # noqa: RUF012 - replaced per instance, never mutated

    def __init__(self, batch_size: int = 32, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def make_dataloader(self, dataset: Dataset | None, *, train: bool) -> ResumableDataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not filled this split; call setup() first")
        sampler = ResumableSampler(dataset, shuffle=train, seed=self.seed, drop_last=False)
        return ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            drop_last=train and len(dataset) >= self.batch_size * sampler.num_replicas,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> ResumableDataLoader:
        return self.make_dataloader(self.train_set, train=True)

    def val_dataloader(self) -> ResumableDataLoader:
        return self.make_dataloader(self.val_set, train=False)

    def test_dataloader(self) -> ResumableDataLoader:
        return self.make_dataloader(self.test_set, train=False)
