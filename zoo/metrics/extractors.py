"""Feature extractors for the image metrics: zoo-trained classifiers for embedded data, and InceptionV3.

Every extractor is a frozen `torch.nn.Module` in eval mode that maps images, float (B, C, H, W) in
[0, 1], to features (B, D) (`forward`) and to class logits (B, K) (`logits`, for the Inception
Score). It carries `name`, `num_features` and `held_out_accuracy` (NaN where unknown).

- `image_extractor(data, image_size, channels)`: a small CNN classifier trained on the real train
  split of an embedded datamodule (`shapes`: 18 colour x shape classes plus a small/large head;
  `digits`: 10 classes), its penultimate layer (global-average-pooled, 128 values) as features.
  Trained once, deterministically for a seed, in seconds on a CPU, then cached in
  `$ZOO_CACHE/extractors/` (default `~/.cache/zoo/extractors/`) as safetensors, with its held-out
  accuracy in a JSON file beside it. The cache key is (data, image size, channels, EXTRACTOR_VERSION).
- `inception_extractor(weights)`: torchmetrics' / torch-fidelity's FID InceptionV3 (pool3, 2048
  features; 1008 logits) from a local weights file: `weights`, else `$ZOO_INCEPTION_WEIGHTS`, else
  `$ZOO_CACHE/weights/pt_inception-2015-12-05-6726825d.pth`. Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

EXTRACTOR_VERSION = "v1"
FEATURE_DIM = 128
CACHE_ENV = "ZOO_CACHE"
INCEPTION_ENV = "ZOO_INCEPTION_WEIGHTS"
# pytorch-fid's release of the FID InceptionV3 weights; torch-fidelity's copy of the same network
# (`weights-inception-2015-12-05-6726825d.pth`) is accepted too. Both have torchvision's key names.
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_FILE_FIDELITY = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_FILE

# Training recipe per embedded datamodule: label heads and epochs. Kept small: seconds on 2 CPU cores.
RECIPES: dict[str, dict[str, Any]] = {
    "shapes": {"heads": {"label": 18, "sizes": 2}, "epochs": 3, "num_train": 6000},
    "digits": {"heads": {"label": 10}, "epochs": 8, "num_train": None},
}


def cache_dir() -> Path:
    """`$ZOO_CACHE`, default `~/.cache/zoo`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "zoo").expanduser()


def _freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


class ImageClassifier(nn.Module):
    """A small CNN: four conv layers (16, 32, 64, 128 channels, 2x2 max-pooling between), global average pooling, linear heads.

    `forward(images in [0, 1])` returns the pooled 128 features; `logits` the first head's logits.
    """

    def __init__(self, channels: int, heads: dict[str, int], width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
            )

        w = width
        self.body = nn.Sequential(
            block(channels, w), nn.MaxPool2d(2),
            block(w, 2 * w), nn.MaxPool2d(2),
            block(2 * w, 4 * w), nn.MaxPool2d(2),
            block(4 * w, FEATURE_DIM),
        )  # fmt: skip
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURE_DIM, n) for name, n in heads.items()})
        self.head_names = list(heads)
        self.num_features = FEATURE_DIM
        self.name = "zoo-classifier"
        self.held_out_accuracy = float("nan")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.body(images.float() * 2.0 - 1.0)
        return x.mean(dim=(2, 3))

    def all_logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self(images)
        return {name: head(features) for name, head in self.heads.items()}

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.heads[self.head_names[0]](self(images))


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run on one thread: this network's small convolutions gain nothing from more, and lose a lot
    (7x measured) when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch inside the block and leave the caller's generator state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _split_tensors(dataset: Any, keys: tuple[str, ...], limit: int | None = None) -> dict[str, torch.Tensor]:
    """Stack a split's items: images to [0, 1], label tensors as they are."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(n)), batch_size=512)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("image", *keys)}
    for batch in loader:
        parts["image"].append((batch["image"] + 1) / 2)
        for k in keys:
            value = batch[k]
            parts[k].append(value[:, 0] if value.ndim == 2 else value)  # per-object attributes: the first
    return {k: torch.cat(v) for k, v in parts.items()}


def _augment(images: torch.Tensor, generator: torch.Generator, shift: int = 2) -> torch.Tensor:
    """Random translation by up to `shift` pixels (zero padding): cheap, label-preserving."""
    n, _, h, w = images.shape
    padded = F.pad(images, (shift, shift, shift, shift))
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    ys = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (n, 1, h, 1)
    xs = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (n, 1, 1, w)
    batch = torch.arange(n)[:, None, None, None]
    chans = torch.arange(images.shape[1])[None, :, None, None]
    return padded[batch, chans, ys, xs]


def train_image_classifier(
    train: dict[str, torch.Tensor],
    held_out: dict[str, torch.Tensor],
    heads: dict[str, int],
    *,
    epochs: int,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 1e-2,
) -> tuple[ImageClassifier, dict[str, float]]:
    """Train an `ImageClassifier` on `train` (images in [0, 1] plus one label tensor per head).

    Deterministic for a seed (on one machine and thread count). Returns the frozen network and its
    held-out accuracy per head.
    """
    channels = train["image"].shape[1]
    with _seeded(seed):
        model = ImageClassifier(channels, heads)
    generator = torch.Generator().manual_seed(seed)
    n = len(train["image"])
    steps_per_epoch = math.ceil(n / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2
    )
    model.train()
    with _one_thread():
        _fit(model, train, heads, optimizer, schedule, generator, epochs, batch_size)
    _freeze(model)
    with torch.no_grad():
        logits = {k: torch.cat(v) for k, v in _batched_logits(model, held_out["image"]).items()}
    accuracy = {k: (logits[k].argmax(1) == held_out[k]).float().mean().item() for k in heads}
    return model, accuracy


def _fit(model, train, heads, optimizer, schedule, generator, epochs, batch_size) -> None:  # noqa: ANN001
    n = len(train["image"])
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            images = _augment(train["image"][index], generator)
            logits = model.all_logits(images)
            loss = sum(F.cross_entropy(logits[k], train[k][index]) for k in heads)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()


def _batched_logits(
    model: ImageClassifier, images: torch.Tensor, batch: int = 512
) -> dict[str, list[torch.Tensor]]:
    out: dict[str, list[torch.Tensor]] = {k: [] for k in model.head_names}
    for start in range(0, len(images), batch):
        for k, v in model.all_logits(images[start : start + batch]).items():
            out[k].append(v)
    return out


def extractor_path(data: str, image_size: int, channels: int) -> Path:
    """Where the extractor for (data, size, channels) is cached: `<cache>/extractors/<key>.safetensors`."""
    key = f"{data}-{image_size}px-{channels}ch-{EXTRACTOR_VERSION}"
    return cache_dir() / "extractors" / f"{key}.safetensors"


def _load_split_data(data: str, image_size: int, channels: int) -> tuple[dict, dict, dict[str, int], int]:
    from zoo import registry

    recipe = RECIPES[data]
    kwargs: dict[str, Any] = {"image_size": image_size, "channels": channels}
    if recipe["num_train"]:
        kwargs["num_train"] = recipe["num_train"]
    datamodule = registry.create_datamodule(data, **kwargs)
    datamodule.setup("fit")
    keys = tuple(recipe["heads"])
    train = _split_tensors(datamodule.train_set, keys)
    held_out = _split_tensors(datamodule.test_set, keys)
    return train, held_out, recipe["heads"], recipe["epochs"]


def image_extractor(data: str, image_size: int, channels: int, *, verbose: bool = True) -> ImageClassifier:
    """The zoo-trained feature extractor for an embedded image datamodule (`shapes` or `digits`).

    Frozen and in eval mode; maps images float (B, C, H, W) in [0, 1] to features (B, 128), with
    `logits()` for the Inception Score and `held_out_accuracy` (label accuracy on the test split).
    Trained on first use (seconds) and cached; see the module docstring.
    """
    from safetensors.torch import load_file, save_file

    if data not in RECIPES:
        raise ValueError(
            f"no zoo-trained extractor for data '{data}': there are extractors for {', '.join(RECIPES)}. "
            "For other data use the InceptionV3 extractor (--extractor inception with --inception-weights PATH)."
        )
    path = extractor_path(data, image_size, channels)
    meta_path = path.with_suffix(".json")
    heads = RECIPES[data]["heads"]
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        model = ImageClassifier(channels, heads)
        model.load_state_dict(load_file(str(path)))
    else:
        start = time.perf_counter()
        train, held_out, heads, epochs = _load_split_data(data, image_size, channels)
        model, accuracy = train_image_classifier(train, held_out, heads, epochs=epochs, seed=0)
        meta = {
            "data": data,
            "image_size": image_size,
            "channels": channels,
            "version": EXTRACTOR_VERSION,
            "num_train": len(train["image"]),
            "num_held_out": len(held_out["image"]),
            "held_out_accuracy": accuracy,
            "train_seconds": round(time.perf_counter() - start, 1),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        # write-then-rename: concurrent processes (DDP ranks) never read a half-written file
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, path)
        tmp_meta = meta_path.with_name(f".{meta_path.name}.{os.getpid()}")
        tmp_meta.write_text(json.dumps(meta, indent=2))
        os.replace(tmp_meta, meta_path)
        if verbose:
            acc = ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
            print(f"trained the {data} feature extractor in {meta['train_seconds']} s "
                  f"(held-out accuracy: {acc}); cached in {path}")  # fmt: skip
    model.name = f"zoo-{data}-{image_size}px-{channels}ch-{EXTRACTOR_VERSION}"
    model.held_out_accuracy = float(meta["held_out_accuracy"]["label"])
    model.accuracies = dict(meta["held_out_accuracy"])
    return _freeze(model)


# --- InceptionV3 --------------------------------------------------------------------------------


class InceptionWeightsError(FileNotFoundError):
    """The FID InceptionV3 weights are not on this machine (zoo never downloads them)."""


def inception_weights_path(weights: str | Path | None = None) -> Path:
    """The local InceptionV3 weights file: `weights`, else `$ZOO_INCEPTION_WEIGHTS`, else the cache."""
    if weights is not None or os.environ.get(INCEPTION_ENV):
        path = Path(weights if weights is not None else os.environ[INCEPTION_ENV]).expanduser()
        if not path.is_file():
            origin = "--inception-weights" if weights is not None else f"${INCEPTION_ENV}"
            raise InceptionWeightsError(
                f"{origin} points to '{path}', which is not a file. {_where_to_put()}"
            )
        return path
    folder = cache_dir() / "weights"
    for name in (INCEPTION_FILE, INCEPTION_FILE_FIDELITY):
        if (folder / name).is_file():
            return folder / name
    raise InceptionWeightsError(f"no InceptionV3 weights found. {_where_to_put()}")


def _where_to_put() -> str:
    target = cache_dir() / "weights" / INCEPTION_FILE
    return (
        f"zoo does not download them: fetch {INCEPTION_FILE} (pytorch-fid's FID InceptionV3, "
        f"{INCEPTION_URL}) on a machine with network access and put it at {target}, "
        f"or anywhere and pass --inception-weights PATH or set {INCEPTION_ENV}=PATH. "
        f"torch-fidelity's copy of the same network, {INCEPTION_FILE_FIDELITY}, works too. "
        "Offline, use a zoo-trained extractor instead (--extractor shapes or digits)."
    )


class InceptionExtractor(nn.Module):
    """torchmetrics' `NoTrainInceptionV3` (torch-fidelity's FID network) behind zoo's extractor interface.

    Images in [0, 1] (grey is repeated to RGB) are quantised to uint8 as the FID reference does, resized
    to 299 x 299 inside the network with torch-fidelity's TF1-compatible bilinear resize; `forward` gives pool3 (2048), `logits` the 1008 unbiased logits.
    """

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as err:  # pragma: no cover - torch-fidelity is a dependency
            raise ImportError(
                "the InceptionV3 extractor needs torch-fidelity: pip install torch-fidelity"
            ) from err
        path = inception_weights_path(weights)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise InceptionWeightsError(
                f"'{path}' is not a readable PyTorch weights file ({type(err).__name__}: {err}). {_where_to_put()}"
            ) from err
        if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state:
            raise InceptionWeightsError(
                f"'{path}' is not an FID InceptionV3 state dict (no 'Mixed_7c.branch_pool.conv.weight'). {_where_to_put()}"
            )
        # torch-fidelity reads the file itself (checked above with weights_only=True first)
        # antialias=False: torch-fidelity's TF1-compatible bilinear resize, the reference FID protocol
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["2048", "logits_unbiased"],
            feature_extractor_weights_path=str(path),
            antialias=False,
        )
        self.name = f"inception-v3-fid ({path.name})"
        self.num_features = 2048
        self.held_out_accuracy = float("nan")
        self.weights_path = path
        _freeze(self)

    def _uint8(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return (images.clamp(0, 1) * 255).round().to(torch.uint8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net._torch_fidelity_forward(self._uint8(images))[0].reshape(len(images), -1)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.net._torch_fidelity_forward(self._uint8(images))[1].reshape(len(images), -1)

    def train(self, mode: bool = True) -> InceptionExtractor:
        return super().train(False)  # frozen: never leaves eval mode


def inception_extractor(weights: str | Path | None = None) -> InceptionExtractor:
    """The FID InceptionV3 from a local file (see `inception_weights_path`); frozen, eval mode."""
    return InceptionExtractor(weights)
