"""How zoo items are stored in litdata chunks, and the `zoo.json` that describes a written data set.

A written data set is a folder (or an object-store prefix) holding one litdata dataset per split,
`<root>/train`, `<root>/val`, `<root>/test`, and `<root>/zoo.json`: the source datamodule's attributes
(`modality`, `image_size`, `channels`, `num_classes`, `class_names`, `sample_rate`, `fps`, `frames`,
`block_size`, its tokenizer, its collate function) and, per split, how each item key is stored and the
training captions (so a caption-conditioned family trains its tokenizer without reading every image).

Each key of an item is stored by what it holds, losslessly:
- `png`: an image (C, H, W) in [-1, 1] on the 8-bit grid (every built-in image datamodule): PNG bytes;
- `frames`: a video (T, C, H, W) on the 8-bit grid: a uint8 tensor of its frames;
- `flac`: audio (S,) in [-1, 1]: 24-bit FLAC bytes at the data's sample rate (the quantisation error,
  below 6e-8, is the only change);
- `str`, `int`, `float`: as themselves; `tensor`: any other tensor, dtype and shape kept.
An image or video off the 8-bit grid (a float-valued source) is stored as a `tensor` instead.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from zoo.errors import DataError, MissingDataError

FORMAT_VERSION = 1
META_FILE = "zoo.json"
SPLITS = ("train", "val", "test")
ATTRIBUTES = (
    "image_size",
    "channels",
    "num_classes",
    "class_names",
    "sample_rate",
    "fps",
    "frames",
    "block_size",
)
CAPTION_LIMIT = 100_000  # captions kept in zoo.json for the tokenizer; a family never reads more


def is_remote(root: str) -> bool:
    return "://" in str(root)


def split_dir(root: str, split: str) -> str:
    return f"{str(root).rstrip('/')}/{split}"


# --- one key at a time ---------------------------------------------------------------------------


def _on_8bit_grid(x: torch.Tensor) -> bool:
    if not x.is_floating_point() or x.numel() == 0 or x.min() < -1 or x.max() > 1:
        return False
    codes = torch.from_numpy(_to_uint8(x)).double()
    return bool(torch.allclose(codes / 127.5 - 1, x.double(), atol=1e-6, rtol=0))


def storage_kind(key: str, value: Any) -> str:
    """How `value` (an item's `key`) is stored; see the module's docstring."""
    if isinstance(value, str):
        return "str"
    if isinstance(value, bool | int | np.integer):
        return "int"
    if isinstance(value, float | np.floating):
        return "float"
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point():
        return "int"  # a label: stored as a number, given back as the same int64 scalar
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise DataError(
            f"item key {key!r} holds a {type(value).__name__}, which zoo.data.optimize cannot store: "
            "items must hold tensors, arrays, strings and numbers"
        )
    if key == "image" and value.ndim == 3 and value.shape[0] in (1, 3) and _on_8bit_grid(value):
        return "png"
    if key == "video" and value.ndim == 4 and _on_8bit_grid(value):
        return "frames"
    if key == "audio" and value.ndim == 1 and value.is_floating_point():
        return "flac"
    return "tensor"


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return torch.round((x.double() + 1) * 127.5).to(torch.uint8).numpy()


def encode_value(kind: str, value: Any, sample_rate: int | None) -> Any:
    from PIL import Image

    if kind == "png":
        pixels = _to_uint8(value).transpose(1, 2, 0)
        buffer = io.BytesIO()
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, format="PNG")
        return buffer.getvalue()
    if kind == "frames":
        return torch.from_numpy(_to_uint8(value))
    if kind == "flac":
        import soundfile

        buffer = io.BytesIO()
        audio = value.detach().to(torch.float32).clamp(-1, 1).numpy()
        soundfile.write(buffer, audio, int(sample_rate or 16000), format="FLAC", subtype="PCM_24")
        return buffer.getvalue()
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "tensor":
        return torch.as_tensor(value).clone()
    return value


def decode_value(kind: str, stored: Any) -> Any:
    from PIL import Image

    from zoo.datamodules._images import uint8_to_signed

    if kind == "png":
        with Image.open(io.BytesIO(stored)) as image:
            return uint8_to_signed(np.array(image))
    if kind == "frames":
        return stored.to(torch.float32).div(127.5).sub(1.0)
    if kind == "flac":
        import soundfile

        audio, _ = soundfile.read(io.BytesIO(stored), dtype="float32")
        return torch.from_numpy(audio)
    if kind == "int":
        return torch.tensor(int(stored), dtype=torch.int64)  # as the in-memory datamodules give labels
    if kind == "float":
        return torch.tensor(float(stored), dtype=torch.float32)
    return stored


def encode_item(item: dict[str, Any], kinds: dict[str, str], sample_rate: int | None) -> dict[str, Any]:
    missing = set(kinds) - set(item)
    if missing:
        raise DataError(f"an item lacks the keys {sorted(missing)} that the split's first item has")
    return {key: encode_value(kind, item[key], sample_rate) for key, kind in kinds.items()}


def decode_item(stored: dict[str, Any], kinds: dict[str, str]) -> dict[str, Any]:
    return {key: decode_value(kind, stored[key]) for key, kind in kinds.items()}


def item_kinds(item: dict[str, Any]) -> dict[str, str]:
    """How each key of a split is stored, from its first item (None values are left out)."""
    if not isinstance(item, dict):
        raise DataError(
            f"datamodule items must be dictionaries of the shared keys, got {type(item).__name__}"
        )
    return {key: storage_kind(key, value) for key, value in item.items() if value is not None}


# --- zoo.json -------------------------------------------------------------------------------------


def datamodule_meta(datamodule: Any, source: str, collate_fn: Any = None) -> dict[str, Any]:
    """The attributes of `datamodule` that families read, for zoo.json; `collate_fn`: its loaders' own, when
    not torch's default (audio pads clips per batch), kept by name so the streaming loaders use it too."""
    attributes = {}
    for name in ATTRIBUTES:
        value = getattr(datamodule, name, None)
        if name in ("num_classes", "class_names") and not value:
            continue
        if value is not None and not callable(value):
            attributes[name] = list(value) if name == "class_names" else value
    tokenizer = getattr(datamodule, "tokenizer", None)
    collate = None
    if collate_fn is not None and collate_fn is not default_collate:
        collate = f"{collate_fn.__module__}:{collate_fn.__qualname__}"
    return {
        "format": FORMAT_VERSION,
        "source": source,
        "modality": getattr(datamodule, "modality", "image"),
        "attributes": attributes,
        "tokenizer": tokenizer.to_state()
        if tokenizer is not None and hasattr(tokenizer, "to_state")
        else None,
        "collate": collate,
        "splits": {},
    }


def write_meta(root: str, meta: dict[str, Any]) -> None:
    text = json.dumps(meta, indent=1)
    if is_remote(root):
        _upload_text(root, META_FILE, text)
        return
    path = Path(root) / META_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a reader never sees half a file


def read_meta(root: str) -> dict[str, Any]:
    """zoo.json of a written data set, with an error that says how to make one when it is not there."""
    how = "write one with: python -m zoo.data.optimize --data NAME --out DIR"
    if is_remote(root):
        text = _download_text(root, META_FILE)
    else:
        path = Path(root) / META_FILE
        if not Path(root).is_dir():
            raise MissingDataError(f"streaming data folder {root!r} does not exist; {how}")
        if not path.is_file():
            raise MissingDataError(
                f"{root!r} has no {META_FILE}, so it was not written by zoo.data.optimize; {how}"
            )
        text = path.read_text()
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{root}/{META_FILE} is not valid JSON ({err}); write the data set again; {how}"
        ) from err
    if meta.get("format") != FORMAT_VERSION:
        raise DataError(
            f"{root}/{META_FILE} is format {meta.get('format')!r}, this zoo reads format {FORMAT_VERSION}; "
            f"write the data set again with this zoo's zoo.data.optimize"
        )
    return meta


def check_chunks(split_root: str) -> None:
    """Every chunk of a local split is there and whole: litdata would wait forever for a missing or short
    chunk (it takes it for a download in progress), so check sizes against its index.json first."""
    if is_remote(split_root):
        return
    index = Path(split_root) / "index.json"
    if not index.is_file():
        raise MissingDataError(
            f"{split_root} has no index.json: the split was not written, or its writing was interrupted; "
            "run python -m zoo.data.optimize again"
        )
    try:
        chunks = json.loads(index.read_text())["chunks"]
    except (json.JSONDecodeError, KeyError) as err:
        raise DataError(f"{index} is corrupt ({err}); run python -m zoo.data.optimize again") from err
    for chunk in chunks:
        path = Path(split_root) / chunk["filename"]
        if not path.is_file():
            raise DataError(f"chunk {path} is missing; run python -m zoo.data.optimize again")
        size, expected = path.stat().st_size, int(chunk["chunk_bytes"])
        if size < expected:
            raise DataError(
                f"chunk {path} is truncated ({size} bytes, its index says {expected}); "
                "run python -m zoo.data.optimize again"
            )


def _fs_provider(root: str) -> Any:
    from litdata.streaming.fs_provider import _get_fs_provider

    return _get_fs_provider(root)


def _upload_text(root: str, name: str, text: str) -> None:  # object stores, through litdata's own clients
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
        file.write(text)
    try:
        _fs_provider(root).upload_file(file.name, f"{root.rstrip('/')}/{name}")
    finally:
        os.unlink(file.name)


def _download_text(root: str, name: str) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, name)
        try:
            _fs_provider(root).download_file(f"{root.rstrip('/')}/{name}", local)
        except Exception as err:
            raise MissingDataError(f"cannot read {root.rstrip('/')}/{name}: {err}") from err
        return Path(local).read_text()
