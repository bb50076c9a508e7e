"""Data sets written by `python -m zoo.data.optimize`, streamed with litdata from a folder or an object store.

    python -m zoo.data.optimize --data shapes --out data/shapes_stream
    python -m zoo.fit --model ldm --data streaming --data.root data/shapes_stream

The batches are the source datamodule's (the same keys, dtypes and collate function), and the
datamodule exposes what the source did (`image_size`, `channels`, `class_names`, `sample_rate`,
`tokenizer`, ...), read from `<root>/zoo.json`, so any family trains on it unchanged.

Loading is litdata's: `StreamingDataset` shards the chunks over DDP ranks and loader workers and
shuffles them (chunk order, then items within a window of chunks) by (seed, epoch);
`StreamingDataLoader` keeps its position in `state_dict()`, which Lightning saves in every
checkpoint, so a run resumed from `last.ckpt` continues with the batches the interrupted run had not
yet seen. Under DDP litdata drops the last items that would give the ranks unequal batches.

What is not the source's: a caption is the one the source gave when the data set was written (the
`shapes` datamodule's caption shuffling happens once, at writing), and augmentation a source applies
when an item is read is frozen likewise.
"""

from __future__ import annotations

import functools
import pkgutil
from typing import Any, ClassVar

import torch
from litdata import StreamingDataLoader, StreamingDataset
from torch.utils.data import default_collate

from zoo.data import ZooDataModule, shards
from zoo.errors import DataError, MissingDataError


class ZooStreamingDataset(StreamingDataset):
    """litdata's `StreamingDataset` giving decoded zoo items, with errors that name the bad chunk."""

    def __init__(
        self, root: str, kinds: dict[str, str], captions: list[str] | None = None, **kwargs: Any
    ) -> None:
        shards.check_chunks(root)
        super().__init__(root, **kwargs)
        self.root, self.kinds = root, kinds
        if captions is not None:
            self.data = {"captions": captions}  # read by zoo.nn.text.dataset_captions without decoding images

    def __getitem__(self, index: Any) -> dict[str, Any]:
        try:
            return shards.decode_item(super().__getitem__(index), self.kinds)
        except DataError:
            raise
        except Exception as err:
            item = getattr(index, "index", index)
            raise DataError(
                f"cannot read item {item} from {self._chunk_name(index)}: {type(err).__name__}: {err}. The chunk "
                "is corrupt; write the split again with python -m zoo.data.optimize"
            ) from err

    def _chunk_name(self, index: Any) -> str:
        try:
            chunk = index.chunk_index if hasattr(index, "chunk_index") else None
            if chunk is None:
                chunk, _ = self.cache._get_chunk_index_from_index(int(index))
            return f"chunk {self.root}/{self.cache._reader.config._chunks[chunk]['filename']}"
        except Exception:  # naming the chunk must not hide the first error
            return f"a chunk of {self.root}"


class ZooStreamingDataLoader(StreamingDataLoader):
    """litdata's loader, fixed for Lightning's way of ending an epoch.

    After `load_state_dict` litdata replays from the saved position until an iteration runs to its end, and
    only then clears its `restore` flag. Lightning knows the epoch's length and stops asking after the last
    batch, so that end is never reached: the next epoch would replay the finished one's position and be
    empty (the run stays exact, but its epoch count gains one). So the flag is cleared as the epoch's last
    batch is handed out.
    """

    def __iter__(self) -> Any:
        for batch in super().__iter__():
            if self._num_samples_yielded_streaming >= len(self) * self.batch_size:
                self.restore = False
            yield batch


class StreamingDataModule(ZooDataModule):
    """A data set written by `python -m zoo.data.optimize`, streamed from `root` (a folder or `s3://...`).

    Args:
        root: the folder or object-store URI given to zoo.data.optimize as --out.
        batch_size: items per batch, per process under DDP.
        num_workers: loader worker processes; litdata gives each its own chunks.
        seed: seed of the shuffled order (new every epoch).
        cache_dir: where chunks of a remote root are cached (default: litdata's).
        max_cache_size: most disk the cache of a remote root may take, e.g. "50GB" (default: litdata's).
    """

    # the data's attributes (image_size, sample_rate, ...) are known once `root` is read: zoo.fit links them
    # to the model's arguments after instantiation instead of while parsing
    attributes_from_root: ClassVar[bool] = True
    modality: ClassVar[str] = ""  # per data set, from zoo.json: zoo.fit checks it once the datamodule exists

    def __init__(
        self,
        root: str,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        max_cache_size: str | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.root = str(root)
        self.cache_dir, self.max_cache_size = cache_dir, max_cache_size
        self.meta = shards.read_meta(self.root)
        self.modality = self.meta["modality"]
        self.attributes = self.meta["attributes"]
        self.class_names = list(self.attributes.get("class_names", []))
        self.num_classes = int(self.attributes.get("num_classes", len(self.class_names)))
        collate = self.meta.get("collate")
        self.collate_fn = _import(collate) if collate else default_collate

    def __getattr__(self, name: str) -> Any:  # image_size, channels, sample_rate, fps, frames, block_size
        attributes = self.__dict__.get("attributes", {})
        if name in shards.ATTRIBUTES and name in attributes:
            return attributes[name]
        if name == "vocab_size" and self.__dict__.get("meta", {}).get("tokenizer"):
            return self.tokenizer.vocab_size
        raise AttributeError(
            f"{type(self).__name__} of {self.__dict__.get('root')!r} has no attribute {name!r}"
        )

    @functools.cached_property
    def tokenizer(self) -> Any:
        state = self.meta.get("tokenizer")
        if state is None:
            return None
        from zoo.tokenizers import tokenizer_from_state

        return tokenizer_from_state(state)

    def setup(self, stage: str | None = None) -> None:
        splits = self.meta["splits"]
        if "train" not in splits:
            raise MissingDataError(
                f"{self.root} has no train split; write it with python -m zoo.data.optimize --split train"
            )
        for split in shards.SPLITS:
            if split in splits and getattr(self, f"{split}_set") is None:
                setattr(self, f"{split}_set", self._dataset(split, train=split == "train"))

    def _dataset(self, split: str, *, train: bool) -> ZooStreamingDataset:
        entry = self.meta["splits"][split]
        cache = {"cache_dir": self.cache_dir, "max_cache_size": self.max_cache_size}
        return ZooStreamingDataset(
            shards.split_dir(self.root, split), entry["kinds"], entry.get("captions"),
            shuffle=train, seed=self.seed, drop_last=None if train else False,
            **{k: v for k, v in cache.items() if v is not None},
        )  # fmt: skip

    def make_dataloader(self, dataset: Any, *, train: bool) -> Any:  # type: ignore[override]
        if dataset is None and train:
            raise MissingDataError(f"{self.root}: call setup() before asking for loaders")
        if dataset is None:
            return []  # a data set written without this split: Lightning skips what it would have run on it
        return ZooStreamingDataLoader(
            dataset, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=self.collate_fn,
            persistent_workers=self.num_workers > 0,
            # its own generator: a loader without one draws its workers' base seed from the global RNG at every
            # iter(), and a resumed run calls iter() at a step the uninterrupted run did not
            generator=torch.Generator().manual_seed(self.seed),
        )  # fmt: skip


def _import(path: str) -> Any:
    try:
        return pkgutil.resolve_name(path)
    except (ImportError, AttributeError, ValueError) as err:
        raise DataError(f"the data set's collate function {path} cannot be imported: {err}") from err
