"""Any folder of images, optionally with class sub-folders and a captions file."""

from __future__ import annotations

import csv
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2

from zoo.data import ZooDataModule
from zoo.errors import DataError, MissingDataError
from zoo.io.images import IMAGE_EXTENSIONS, find_image_files, is_image_file

from ._images import check_fractions, check_image_args

CAPTION_FILES = ("captions.csv", "captions.jsonl")


def load_image(path: Path, mode: str) -> Image.Image:
    """Open and fully decode an image as `mode` ("RGB" or "L"); transparency is composited on white."""
    with Image.open(path) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        return image.convert(mode)


class BadImageError(DataError, RuntimeError):
    """An image file that cannot be opened or decoded."""


def _bad_image_message(path: Path, error: BaseException) -> str:
    return (
        f"cannot read image file '{path}': {type(error).__name__}: {error}. Replace or delete the file, or "
        f"pass skip_bad_files=True (--data.skip_bad_files true) to skip unreadable images with a warning."
    )


def _check_image(path: Path, mode: str) -> str | None:
    """None if the file decodes, else the error message."""
    try:
        load_image(path, mode)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return _bad_image_message(path, error)
    return None


def read_captions(path: Path) -> dict[str, str]:
    """{file relative to the root, as posix: caption} from a CSV (header `file,caption`) or JSONL file."""
    captions: dict[str, str] = {}

    def add(file: Any, caption: Any, where: str) -> None:
        if not isinstance(file, str) or not isinstance(caption, str):
            raise DataError(f"{where} of captions file '{path}': 'file' and 'caption' must be strings")
        key = Path(file).as_posix()
        if key in captions:
            raise DataError(f"captions file '{path}' gives two captions for '{file}' ({where})")
        captions[key] = caption

    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"file", "caption"} <= set(reader.fieldnames):
                raise DataError(
                    f"captions file '{path}' needs a header row with columns 'file' and 'caption', "
                    f"found {reader.fieldnames}"
                )
            for row in reader:
                add(row["file"], row["caption"], f"line {reader.line_num}")
    elif path.suffix.lower() == ".jsonl":
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(
                        f"line {number} of captions file '{path}' is not JSON: {error}"
                    ) from error
                if not isinstance(record, dict) or not {"file", "caption"} <= record.keys():
                    raise DataError(
                        f"line {number} of captions file '{path}' needs keys 'file' and 'caption'"
                    )
                add(record["file"], record["caption"], f"line {number}")
    else:
        raise DataError(
            f"captions file '{path}' must be .csv (columns file,caption) or .jsonl (keys file, caption)"
        )
    return captions


class ImageFolderDataset(Dataset):
    """Image files as batch dictionaries: `image`, and `label` / `caption` when given."""

    def __init__(
        self,
        files: list[Path],
        *,
        image_size: int,
        channels: int,
        labels: list[int] | None = None,
        captions: list[str] | None = None,
    ) -> None:
        self.files = files
        self.labels = labels
        self.captions = captions
        self.mode = "RGB" if channels == 3 else "L"
        self.transform = v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(image_size, antialias=True),  # the short side
                v2.CenterCrop(image_size),
                v2.ToDtype(torch.float32, scale=True),
            ]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        try:
            image = load_image(path, self.mode)
        except Exception as error:
            raise BadImageError(
                _bad_image_message(path, error) + " (It decoded in setup(): has it changed since?)"
            ) from error
        item: dict[str, Any] = {"image": self.transform(image).mul(2.0).sub(1.0).clamp(-1.0, 1.0)}
        if self.labels is not None:
            item["label"] = torch.tensor(self.labels[index], dtype=torch.int64)
        if self.captions is not None:
            item["caption"] = self.captions[index]
        return item


class ImageFolderDataModule(ZooDataModule):
    """Images from a folder (png, jpg, jpeg, bmp, webp, gif; any case), with optional classes and captions.

    Layout: either images anywhere under `root` with no class folders, or one sub-folder per class
    (images at any depth inside it; names sorted give `class_names` and `label`). Loose images at the
    root next to class folders are an error. The classes are read in `__init__` (a directory listing), so
    `num_classes` / `class_names` are known before `setup()`; without class folders they are 0 and [].

    Captions: `captions_file` (a path; relative paths are tried from the working directory, then from
    `root`), or else `captions.csv` / `captions.jsonl` at the root when present. CSV needs a header with
    columns `file,caption`; JSONL one object per line with keys `file` and `caption`; `file` is relative
    to `root`. When captions are used, every image needs one.

    Images are decoded as RGB (channels=3; transparency on white) or grey (channels=1), the short side is
    resized to `image_size` (default 64, antialiased bilinear), centre-cropped, and scaled to [-1, 1].
    `setup()` decodes every file once: an unreadable one is an error naming it, or with
    `skip_bad_files=True` is skipped with one warning naming all skipped files. The split is a seeded
    permutation of the sorted files: `val_fraction` (default 0.1) and `test_fraction` (default 0; when 0
    the test split is the validation split).

    Item keys: `image` float32 (channels, S, S) in [-1, 1]; `label` int64 with class folders; `caption`
    str with captions.

    Args:
        root: the folder of images, loose or in one sub-folder per class.
        image_size: side in pixels (short side resized, centre-cropped); zoo.fit links model.image_size to it.
        channels: 3 (RGB) or 1 (grey); zoo.fit links model.in_channels to it.
        captions_file: a .csv or .jsonl of captions; null: captions.csv or captions.jsonl in root, if there.
        val_fraction: fraction of the images held out for validation (at least one), in (0, 1).
        test_fraction: fraction held out for testing, in [0, 1); 0: the test split is the validation split.
        skip_bad_files: skip unreadable images with a warning instead of failing in setup().
        seed: seed of the split and of the training order.
    """

    modality = "image"

    def __init__(
        self,
        root: str,
        image_size: int = 64,
        channels: int = 3,
        captions_file: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        skip_bad_files: bool = False,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters()  # recorded in checkpoints, so evaluation can rebuild the data
        check_image_args(image_size, channels)
        check_fractions(val_fraction, test_fraction)
        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.channels = channels
        self.captions_file = captions_file
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.skip_bad_files = skip_bad_files
        self.files, self.file_labels, self.class_names = self._scan()
        self.num_classes = len(self.class_names)

    def _scan(self) -> tuple[list[Path], list[int] | None, list[str]]:
        root = self.root
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            raise MissingDataError(
                f"image_folder root '{root}' {what}; expected a folder of images "
                f"({', '.join(IMAGE_EXTENSIONS)}), optionally in one sub-folder per class"
            )
        entries = sorted(root.iterdir())
        loose = [p for p in entries if p.is_file() and is_image_file(p)]
        classes = [
            (p.name, found)
            for p in entries
            if p.is_dir() and not p.name.startswith(".")
            if (found := find_image_files(p))
        ]
        if loose and classes:
            raise DataError(
                f"image_folder root '{root}' has images at the top level (e.g. '{loose[0].name}') and class "
                f"sub-folders ({', '.join(name for name, _ in classes)}); put every image in a class folder, or none"
            )
        if classes:
            files = [path for _, found in classes for path in found]
            labels = [label for label, (_, found) in enumerate(classes) for _ in found]
            return files, labels, [name for name, _ in classes]
        if not loose:
            raise MissingDataError(
                f"no images found in image_folder root '{root}'; expected image files "
                f"({', '.join(IMAGE_EXTENSIONS)}, any case) in it, or in one sub-folder per class"
            )
        return loose, None, []

    def _captions_path(self) -> Path | None:
        if self.captions_file is not None:
            path = Path(self.captions_file).expanduser()
            if not path.is_file() and not path.is_absolute() and (self.root / path).is_file():
                path = self.root / path
            if not path.is_file():
                raise MissingDataError(
                    f"captions_file '{self.captions_file}' not found (also tried under '{self.root}')"
                )
            return path
        present = [self.root / name for name in CAPTION_FILES if (self.root / name).is_file()]
        if len(present) > 1:
            raise DataError(
                f"image_folder root '{self.root}' has both {CAPTION_FILES}; keep one or pass captions_file"
            )
        return present[0] if present else None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        files, labels = list(self.files), self.file_labels
        captions = None
        captions_path = self._captions_path()
        if captions_path is not None:
            by_file = read_captions(captions_path)
            relative = [path.relative_to(self.root).as_posix() for path in files]
            missing = [name for name in relative if name not in by_file]
            if missing:
                raise DataError(
                    f"{len(missing)} image(s) have no caption in '{captions_path}', first: "
                    f"{', '.join(repr(name) for name in missing[:5])}; every image needs a caption when captions are used"
                )
            captions = [by_file[name] for name in relative]

        mode = "RGB" if self.channels == 3 else "L"
        with ThreadPoolExecutor(
            max_workers=min(8, os.cpu_count() or 1)
        ) as pool:  # PIL decodes without the GIL
            problems = list(pool.map(lambda path: _check_image(path, mode), files))
        bad = [i for i, problem in enumerate(problems) if problem is not None]
        if bad and not self.skip_bad_files:
            raise BadImageError(
                problems[bad[0]] + (f" ({len(bad)} unreadable files in all)" if len(bad) > 1 else "")
            )
        if bad:
            warnings.warn(
                f"skipping {len(bad)} unreadable image file(s) under '{self.root}': "
                + ", ".join(str(files[i]) for i in bad),
                stacklevel=2,
            )
            good = [i for i, problem in enumerate(problems) if problem is None]
            files = [files[i] for i in good]
            labels = [labels[i] for i in good] if labels is not None else None
            captions = [captions[i] for i in good] if captions is not None else None
        if len(files) < 2:
            raise DataError(
                f"image_folder root '{self.root}' has {len(files)} readable image(s); need at least 2 to split"
            )

        dataset = ImageFolderDataset(
            files, image_size=self.image_size, channels=self.channels, labels=labels, captions=captions
        )
        order = np.random.default_rng(self.seed % 2**64).permutation(len(files))
        num_val = max(1, round(len(files) * self.val_fraction))
        num_test = max(1, round(len(files) * self.test_fraction)) if self.test_fraction > 0 else 0
        if num_val + num_test >= len(files):
            raise DataError(
                f"{len(files)} images are too few for val_fraction={self.val_fraction} and "
                f"test_fraction={self.test_fraction}: no training images would be left"
            )
        self.val_set = Subset(dataset, sorted(order[:num_val].tolist()))
        self.test_set = (
            Subset(dataset, sorted(order[num_val : num_val + num_test].tolist()))
            if num_test
            else self.val_set
        )
        self.train_set = Subset(dataset, sorted(order[num_val + num_test :].tolist()))
