"""Control images for ControlNet: which batch key holds each kind, and how to make one from an ordinary image.

Every kind is an RGB picture (3, H, W) in [0, 1] at the image's size, so a user can draw or edit one and
pass it as a PNG (`zoo.sample --control cond.png`):

| kind | batch key (`shapes`) | from an ordinary image (`--control-from`) |
|---|---|---|
| `edges` | `edges`: the outlines, 1 px | `kornia.filters.canny` (Canny's detector, sigma 1, thresholds 0.1 / 0.2) |
| `segmentation` | `segmentation`: shape classes in red, green, blue | the `shapes` judge's pixel labels (`zoo.metrics.geneval`) |
| `keypoints` | `keypoints`: centres red, corners green | none: a scene's geometry, drawn by `keypoint_map` |
"""

from __future__ import annotations

from typing import Any

import torch

CONDITION_KINDS = ("edges", "segmentation", "keypoints")


def check_kind(kind: str) -> str:
    if kind not in CONDITION_KINDS:
        raise ValueError(f"unknown control condition {kind!r}; the kinds are {', '.join(CONDITION_KINDS)}")
    return kind


def condition_of_batch(kind: str, batch: dict[str, Any]) -> torch.Tensor:
    """The control images (B, 3, H, W) in [0, 1] of a batch, from the datamodule's key for `kind`."""
    check_kind(kind)
    if kind not in batch:
        raise ValueError(
            f"a {kind} ControlNet trains on batches with a {kind!r} key (the `shapes` datamodule gives edges, "
            f"segmentation and keypoints); this batch has {', '.join(sorted(batch))}"
        )
    condition = batch[kind].float()
    return condition.expand(-1, 3, -1, -1) if condition.shape[1] == 1 else condition


def canny_edges(images: torch.Tensor) -> torch.Tensor:
    """Canny edges (B, 3, H, W) in {0, 1} of images (B, C, H, W) in [0, 1], by kornia."""
    import kornia

    grey = kornia.color.rgb_to_grayscale(images) if images.shape[1] == 3 else images
    _, edges = kornia.filters.canny(grey.float(), low_threshold=0.1, high_threshold=0.2)
    return edges.expand(-1, 3, -1, -1)


def judge_segmentation(images: torch.Tensor) -> torch.Tensor:
    """A `segmentation` map (B, 3, H, W) of images (B, 3, H, W) in [0, 1] of `shapes`-like scenes: each pixel
    the judge calls an object's, in its shape class's colour (circle red, square green, triangle blue)."""
    from zoo.metrics.geneval import shapes_judge

    judge = shapes_judge(images.shape[-1], verbose=False)
    with torch.no_grad():
        color_logits, shape_logits = judge.net(images.float().cpu())
    foreground = color_logits.argmax(1) != 0  # colour 0 is the background
    shape = shape_logits[:, 1:].argmax(1)
    out = torch.nn.functional.one_hot(shape, 3).permute(0, 3, 1, 2).float() * foreground[:, None]
    return out.to(images.device)


def condition_of_image(kind: str, images: torch.Tensor) -> torch.Tensor:
    """The `kind` control image (B, 3, H, W) of ordinary images (B, C, H, W) in [0, 1]; see the table."""
    check_kind(kind)
    if kind == "edges":
        return canny_edges(images)
    if kind == "segmentation":
        if images.shape[1] != 3:
            raise ValueError("a segmentation map is read from an RGB image")
        return judge_segmentation(images)
    raise ValueError(
        "keypoints are not read from an image: draw the map (zoo.datamodules.shapes.keypoint_map) and pass it "
        "with --control"
    )
