"""Loader throughput of the `streaming` datamodule against the in-memory `shapes` one and an `image_folder` of
the same images, in samples per second over whole epochs.

    python benchmarks/streaming_speed.py [--num 4000] [--batch-size 64] [--workers 0] [--epochs 2]

The same scenes three ways: `shapes` in memory (every item with its masks and captions); the same images as
PNG files in a folder read by `image_folder` (image and label only, decoded and resized per item); and
`zoo.data.optimize` chunks of `--data image_folder` read by `streaming` (the same keys as the folder, PNG
bytes in litdata chunks), so the last two compare file-per-item against chunked storage of equal items.
Writing the folder and the chunks is timed apart. Figures: benchmarks/RESULTS.md, "Large data sets".
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import zoo
from zoo.data.optimize import main as optimize


def throughput(datamodule, epochs: int) -> float:
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    for _ in loader:  # one warm-up epoch: file caches, worker start
        pass
    start, count = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            count += len(batch["image"])
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    common = {"batch_size": args.batch_size, "num_workers": args.workers}
    shapes = zoo.create_datamodule("shapes", num_train=args.num, num_val=16, num_test=16, **common)
    rows = {"shapes, in memory": throughput(shapes, args.epochs)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "folder"
        start = time.perf_counter()
        for index in range(args.num):  # one class folder per label, as image_folder reads them
            label = int(shapes.train_set[index]["label"])
            pixels = np.asarray(shapes.train_set.images[index])
            (folder / f"{label:02d}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{label:02d}" / f"{index:06d}.png")
        folder_seconds = time.perf_counter() - start
        flags = {"root": str(folder), "image_size": 32, "val_fraction": 0.01, "test_fraction": 0.01}
        rows["image_folder, PNG files"] = throughput(
            zoo.create_datamodule("image_folder", **flags, **common), args.epochs
        )
        start = time.perf_counter()
        optimize(["--data", "image_folder", "--data.root", str(folder), "--data.image_size", "32",
                  "--data.val_fraction", "0.01", "--data.test_fraction", "0.01", "--out", f"{tmp}/chunks"])  # fmt: skip
        chunk_seconds = time.perf_counter() - start
        streaming = zoo.create_datamodule("streaming", root=f"{tmp}/chunks", **common)
        rows["streaming, litdata chunks"] = throughput(streaming, args.epochs)
    print(
        f"\n{args.num} scenes of 32x32, batch {args.batch_size}, {args.workers} workers, {args.epochs} epochs timed"
    )
    print(
        f"writing: PNG folder {folder_seconds:.1f} s, zoo.data.optimize of that folder {chunk_seconds:.1f} s"
    )
    print("| loader | samples/s | against the folder |\n|---|---|---|")
    base = rows["image_folder, PNG files"]
    for name, rate in rows.items():
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
