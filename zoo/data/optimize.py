"""Write any zoo datamodule's splits as litdata chunks, for the `streaming` datamodule.

    python -m zoo.data.optimize --data shapes --data.max_objects 3 --out data/shapes_stream
    python -m zoo.data.optimize --data image_folder --data.root photos/ --data.image_size 64 --out s3://bucket/photos
    python -m zoo.fit --model ldm --data streaming --data.root data/shapes_stream

Each split goes to `<out>/<split>/` through litdata's `optimize` (its chunk format, its parallel
workers, local folders or object-store URIs), and `<out>/zoo.json` records what the source
datamodule exposes to families (`zoo.data.shards`). Items are written in the source's own order;
the streaming loaders shuffle.
"""

from __future__ import annotations

import argparse
import multiprocessing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zoo import registry
from zoo.cli import UsageError, usage_errors_reported
from zoo.data import shards
from zoo.errors import DataError

PROG = "python -m zoo.data.optimize"


class _WriteItem:
    """litdata's `fn`: index -> the stored form of the dataset's item (picklable for its worker processes)."""

    def __init__(self, dataset: Any, kinds: dict[str, str], sample_rate: int | None) -> None:
        self.dataset, self.kinds, self.sample_rate = dataset, kinds, sample_rate

    def __call__(self, index: int) -> dict[str, Any]:
        return shards.encode_item(self.dataset[index], self.kinds, self.sample_rate)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a datamodule's registry name (python -m zoo.list)")
    parser.add_argument("--out", required=True, help="the output folder or object-store URI (s3://...)")
    parser.add_argument(
        "--split", default="all", choices=[*shards.SPLITS, "all"], help="the split(s) to write"
    )
    parser.add_argument("--chunk-bytes", default="64MB", help="litdata's chunk size, e.g. 64MB (default)")
    parser.add_argument("--num-workers", type=int, default=1, help="litdata worker processes (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace splits already written there")
    return parser


def build_datamodule(name: str, flags: Sequence[str]) -> Any:
    """The datamodule `name` with its `--data.KEY V` flags, parsed as zoo.fit parses them."""
    from jsonargparse import ArgumentParser

    cls = registry.get_datamodule_class(name)
    parser = ArgumentParser(prog=PROG, exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    try:
        config = parser.parse_args(list(flags))
    except Exception as err:
        raise UsageError(
            f"{err} (the flags of --data {name}: python -m zoo.fit --data {name} --help)", PROG
        ) from err
    return cls(**config.data.as_dict())


def optimize_split(datamodule: Any, split: str, out: str, meta: dict[str, Any], **litdata_args: Any) -> int:
    """Write one split of a set-up datamodule to `<out>/<split>`; returns the number of items."""
    from litdata import optimize

    dataset = getattr(datamodule, f"{split}_set", None)
    if dataset is None or len(dataset) == 0:
        return 0
    kinds = shards.item_kinds(dataset[0])
    sample_rate = meta["attributes"].get("sample_rate")
    # litdata's workers are spawned (a forked one hangs here), and litdata sets the caller's global start
    # method to spawn on the way: put it back, so the caller's own DataLoader workers still fork
    previous = multiprocessing.get_start_method(allow_none=True)
    try:
        optimize(
            fn=_WriteItem(dataset, kinds, sample_rate), inputs=list(range(len(dataset))),
            output_dir=shards.split_dir(out, split), **litdata_args,
        )  # fmt: skip
    finally:
        multiprocessing.set_start_method(previous, force=True)
    entry: dict[str, Any] = {"num_items": len(dataset), "kinds": kinds}
    if "caption" in kinds and split == "train":
        from zoo.nn.text import dataset_captions

        entry["captions"] = dataset_captions(dataset, limit=shards.CAPTION_LIMIT)
    meta["splits"][split] = entry
    return len(dataset)


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
    """Entry point of `python -m zoo.data.optimize`; returns the items written per split."""
    with usage_errors_reported(PROG):
        try:
            return _optimize(argv)
        except DataError as err:  # the user's data: one line, as zoo.fit prints it
            raise UsageError(str(err), PROG) from err


def _optimize(argv: Sequence[str] | None) -> dict[str, int]:
    args, data_flags = _parser().parse_known_args(argv)
    stray = [flag for flag in data_flags if flag.startswith("-") and not flag.startswith("--data.")]
    if stray:
        raise UsageError(f"unknown flags {stray}; datamodule flags are --data.KEY VALUE", PROG)
    datamodule = build_datamodule(args.data, data_flags)
    datamodule.setup("fit")
    datamodule.setup("test")
    collate = datamodule.train_dataloader().collate_fn if datamodule.train_set is not None else None
    existing = None
    if (
        not args.overwrite
        and not shards.is_remote(args.out)
        and (Path(args.out) / shards.META_FILE).is_file()
    ):
        existing = shards.read_meta(args.out)
    meta = shards.datamodule_meta(datamodule, args.data, collate)
    if existing is not None:
        meta["splits"] = existing["splits"]
    splits = shards.SPLITS if args.split == "all" else (args.split,)
    for split in splits:
        if split in meta["splits"] and not args.overwrite:
            raise UsageError(
                f"{args.out} already holds a {split} split; pass --overwrite to replace it", PROG
            )
    counts = {}
    for split in splits:
        counts[split] = optimize_split(
            datamodule, split, args.out, meta, chunk_bytes=args.chunk_bytes, num_workers=args.num_workers,
            mode="overwrite" if args.overwrite else None,
        )  # fmt: skip
        if counts[split] == 0:
            if args.split != "all":
                raise DataError(f"the {split} split of --data {args.data} is empty; nothing to write")
            print(f"{split}: empty in --data {args.data}, not written")
            continue
        shards.write_meta(args.out, meta)  # after each split: an interruption keeps the splits already done
        print(f"{split}: {counts[split]} items -> {shards.split_dir(args.out, split)}")
    return counts


if __name__ == "__main__":
    main()
