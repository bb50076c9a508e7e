"""CLIP score: 100 * max(cos(image embedding, text embedding), 0), averaged over image-caption pairs.

Built on torchmetrics' `CLIPScore`, fed either by
- a local Hugging Face CLIP folder (`CLIPModel` + `CLIPProcessor` saved with `save_pretrained`),
  read with `local_files_only=True`, or a zoo `clip` (model or checkpoint), both through
  `zoo.nn.clip_adapter`, or
- any object with `encode_image(images (B, C, H, W) in [0, 1]) -> (B, D)` and
  `encode_text(texts: list[str]) -> (B, D)`, such as a checkpoint of the zoo `clip` family.

One departure from torchmetrics: it clips the *mean* at 0 (max(mean cos, 0)); zoo clips each pair
(the definition of Hessel et al. 2021), so a few unrelated pairs cannot cancel good ones. When all
pairs have cos >= 0 the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.functional.multimodal.clip_score import _clip_score_update
from torchmetrics.multimodal.clip_score import CLIPScore

from zoo.metrics.registry import MetricContext, register_metric
from zoo.nn.clip_adapter import clip_model_and_processor, is_zoo_clip


class _EncoderModel(nn.Module):
    """A zoo CLIP encoder behind the two methods of transformers' CLIPModel that torchmetrics calls."""

    def __init__(self, encoder: Any, texts: list[str]) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = SimpleNamespace()  # torchmetrics looks for config.text_config (a length limit)
        self._texts = texts  # shared with the processor: "token ids" index into it

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        return self.encoder.encode_image(pixel_values)

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.encoder.encode_text([self._texts[int(i)] for i in input_ids[:, 0]])


class _EncoderProcessor:
    """The processor half: images pass through (rescaled from 0..255 to [0, 1]), texts become indices."""

    def __init__(self, texts: list[str]) -> None:
        self._texts = texts

    def __call__(self, images: Any = None, text: Any = None, **_: Any) -> dict[str, Tensor]:
        if images is not None:
            return {"pixel_values": torch.stack([img.float() / 255.0 for img in images])}
        self._texts[:] = list(text)
        ids = torch.arange(len(self._texts))[:, None]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def clip_pair(clip: str | Path | Any) -> tuple[Any, Any]:
    """The (model, processor) pair torchmetrics' CLIPScore calls: a zoo `clip` (module or checkpoint) or a
    local Hugging Face CLIP folder go through `zoo.nn.clip_adapter`; any other object with
    `encode_image(images in [0, 1])` and `encode_text(texts)` through the small adapter above."""
    if isinstance(clip, (str, Path)) or is_zoo_clip(clip):
        return clip_model_and_processor(clip)
    if not (hasattr(clip, "encode_image") and hasattr(clip, "encode_text")):
        raise TypeError(
            f"{type(clip).__name__} is not a CLIP encoder: it needs encode_image(images) and encode_text(texts)"
        )
    texts: list[str] = []
    return _EncoderModel(clip, texts), _EncoderProcessor(texts)


class ClipScore(CLIPScore):
    """torchmetrics' CLIPScore with a local model and per-pair clipping at 0 (see the module docstring).

    `clip`: a local Hugging Face CLIP folder, or an object with `encode_image` / `encode_text`.
    `update(images (B, C, H, W) in [0, 1], captions)`; `compute()` -> mean of 100 * max(cos, 0).
    """

    def __init__(self, clip: str | Path | Any, **kwargs: Any) -> None:
        pair = clip_pair(clip)
        super().__init__(model_name_or_path=lambda: pair, **kwargs)

    def update(self, images: Tensor, captions: Sequence[str]) -> None:  # type: ignore[override]
        # uint8: what every processor (Hugging Face's, the zoo clip's, the adapter above) reads as 0..255
        pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        score, n = _clip_score_update(list(pixels), list(captions), self.model, self.processor)
        self.score += score.clamp_min(0).sum()
        self.n_samples += n

    def compute(self) -> Tensor:
        return self.score / self.n_samples


def clip_score(
    images: Tensor, captions: Sequence[str], clip: str | Path | Any, batch_size: int = 64
) -> float:
    """Mean of 100 * max(cos, 0) between CLIP embeddings of `images` (in [0, 1]) and `captions`."""
    if len(images) != len(captions):
        raise ValueError(f"got {len(images)} images but {len(captions)} captions")
    metric = ClipScore(clip)
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            metric.update(images[start : start + batch_size], captions[start : start + batch_size])
    return float(metric.compute())


@register_metric(
    "clip_score", modalities=("image",), needs=("fake", "prompts", "clip"), higher_is_better=True
)
def _clip_score(ctx: MetricContext) -> dict[str, float]:
    """CLIP score between generated images and the prompts they were generated from."""
    ctx.require(
        "fake", "prompts", "clip", metric="clip_score (give --clip PATH and a text-conditioned model)"
    )
    return {"clip_score": clip_score(ctx.fake, ctx.prompts[: len(ctx.fake)], ctx.clip, ctx.batch_size)}
