"""A zoo-trained video feature extractor for an FVD-style Fréchet distance on `moving_shapes`.

FVD (Unterthiner et al. 2018) is the Fréchet distance between features of real and generated clips from an
I3D network trained on Kinetics. No such network is reachable offline, and Kinetics features say little
about 32x32 shapes; so, as `image_extractor` does for FID, zoo trains a small 3D-conv classifier on the
embedded data itself: `VideoClassifier`, three (3x3x3 conv, BatchNorm, ReLU) stages with pooling over space
(and once over time), global average pooling to 128 features, and one linear head per label (direction,
shape, colour). Telling directions apart needs motion, so the features carry it: a clip that stands still or
jitters lands away from the real ones.

    extractor = video_extractor("moving_shapes", frames=8, image_size=32, channels=3)
    features = extractor(clips)                  # clips (N, T, C, H, W) in [0, 1] -> (N, 128)
    extractor.accuracies                          # held-out accuracy per head
    fvd = frechet_distance(extractor(real), extractor(fake))

Trained once (about a minute on one CPU thread), deterministic for a seed, cached in
`$ZOO_CACHE/extractors/` beside the image extractors, with its held-out accuracy in a JSON file.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.metrics.extractors import FEATURE_DIM, _freeze, _one_thread, _seeded, cache_dir

VIDEO_EXTRACTOR_VERSION = "v1"
VIDEO_RECIPES: dict[str, dict[str, Any]] = {
    # heads: label name -> classes; the first object's attributes of moving_shapes
    "moving_shapes": {"heads": {"directions": 4, "shapes": 3, "colors": 6}, "epochs": 4, "num_train": 3000},
}


class VideoClassifier(nn.Module):
    """A small 3D CNN over clips (N, T, C, H, W) in [0, 1]: 128 pooled features and one linear head per label."""

    def __init__(self, channels: int, heads: dict[str, int], width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)
            )

        w = width
        self.body = nn.Sequential(
            block(channels, w), nn.MaxPool3d((1, 2, 2)),
            block(w, 2 * w), nn.MaxPool3d((2, 2, 2)),
            block(2 * w, 4 * w), nn.MaxPool3d((1, 2, 2)),
            block(4 * w, FEATURE_DIM),
        )  # fmt: skip
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURE_DIM, n) for name, n in heads.items()})
        self.head_names = list(heads)
        self.num_features = FEATURE_DIM
        self.name = "zoo-video-classifier"
        self.held_out_accuracy = float("nan")
        self.accuracies: dict[str, float] = {}

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.ndim != 5:
            raise ValueError(
                f"the video extractor takes clips (N, T, C, H, W), got shape {tuple(clips.shape)}"
            )
        x = self.body(clips.float().transpose(1, 2) * 2.0 - 1.0)  # Conv3d wants (N, C, T, H, W)
        return x.mean(dim=(2, 3, 4))

    def all_logits(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self(clips)
        return {name: head(features) for name, head in self.heads.items()}

    def logits(self, clips: torch.Tensor) -> torch.Tensor:
        return self.heads[self.head_names[0]](self(clips))


def _clips(dataset: Any, keys: tuple[str, ...], limit: int | None = None) -> dict[str, torch.Tensor]:
    n = len(dataset) if limit is None else min(limit, len(dataset))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(n)), batch_size=256)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("video", *keys)}
    for batch in loader:
        parts["video"].append((batch["video"] + 1) / 2)
        for k in keys:
            parts[k].append(batch[k][:, 0])  # the first object's attribute
    return {k: torch.cat(v) for k, v in parts.items()}


def features_of(extractor: nn.Module, clips: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Features (N, 128) of clips (N, T, C, H, W) in [0, 1], in batches, without gradients."""
    with torch.no_grad(), _one_thread():
        return torch.cat([extractor(clips[i : i + batch_size]) for i in range(0, len(clips), batch_size)])


def train_video_classifier(
    train: dict[str, torch.Tensor],
    held_out: dict[str, torch.Tensor],
    heads: dict[str, int],
    *,
    epochs: int,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 5e-3,
) -> tuple[VideoClassifier, dict[str, float]]:
    """Train a `VideoClassifier` on `train` (clips in [0, 1] plus one label tensor per head); returns the
    frozen network and its held-out accuracy per head."""
    channels = train["video"].shape[2]
    with _seeded(seed):
        model = VideoClassifier(channels, heads)
    generator = torch.Generator().manual_seed(seed)
    n = len(train["video"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * math.ceil(n / batch_size), pct_start=0.2
    )
    model.train()
    with _one_thread():
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch_size):
                index = order[start : start + batch_size]
                logits = model.all_logits(train["video"][index])
                loss = sum(F.cross_entropy(logits[k], train[k][index]) for k in heads)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    _freeze(model)
    with torch.no_grad(), _one_thread():
        logits = [
            model.all_logits(held_out["video"][i : i + 128]) for i in range(0, len(held_out["video"]), 128)
        ]
    accuracy = {
        k: (torch.cat([part[k] for part in logits]).argmax(1) == held_out[k]).float().mean().item()
        for k in heads
    }
    return model, accuracy


def video_extractor(
    data: str = "moving_shapes",
    frames: int = 8,
    image_size: int = 32,
    channels: int = 3,
    *,
    verbose: bool = True,
) -> VideoClassifier:
    """The zoo-trained 3D-conv feature extractor for `moving_shapes` clips of this shape (trained on first
    use, then cached); frozen, in eval mode, with `accuracies` (held-out accuracy per head)."""
    from safetensors.torch import load_file, save_file

    from zoo import registry

    if data not in VIDEO_RECIPES:
        raise ValueError(
            f"no zoo-trained video extractor for data '{data}': there is one for {', '.join(VIDEO_RECIPES)}"
        )
    recipe = VIDEO_RECIPES[data]
    heads = recipe["heads"]
    key = f"{data}-{frames}f-{image_size}px-{channels}ch-{VIDEO_EXTRACTOR_VERSION}"
    path = cache_dir() / "extractors" / f"{key}.safetensors"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        model = VideoClassifier(channels, heads)
        model.load_state_dict(load_file(str(path)))
    else:
        start = time.perf_counter()
        datamodule = registry.create_datamodule(
            data, frames=frames, image_size=image_size, channels=channels, num_train=recipe["num_train"]
        )
        datamodule.setup("fit")
        keys = tuple(heads)
        train, held_out = _clips(datamodule.train_set, keys), _clips(datamodule.test_set, keys)
        model, accuracy = train_video_classifier(train, held_out, heads, epochs=recipe["epochs"])
        meta = {
            "data": data, "frames": frames, "image_size": image_size, "channels": channels,
            "version": VIDEO_EXTRACTOR_VERSION, "num_train": len(train["video"]),
            "num_held_out": len(held_out["video"]), "held_out_accuracy": accuracy,
            "train_seconds": round(time.perf_counter() - start, 1),
        }  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")  # write-then-rename, as image_extractor
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, path)
        tmp_meta = meta_path.with_name(f".{meta_path.name}.{os.getpid()}")
        tmp_meta.write_text(json.dumps(meta, indent=2))
        os.replace(tmp_meta, meta_path)
        if verbose:
            acc = ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
            print(
                f"trained the {data} video extractor in {meta['train_seconds']} s (held-out accuracy: {acc})"
            )
    model.name = f"zoo-video-{key}"
    model.accuracies = dict(meta["held_out_accuracy"])
    model.held_out_accuracy = float(model.accuracies[model.head_names[0]])
    return _freeze(model)
