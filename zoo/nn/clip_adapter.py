"""torchmetrics' `CLIPScore` over a zoo `clip` model or a HuggingFace CLIP saved in a local folder.

`CLIPScore(model_name_or_path=callable)` accepts any callable returning `(model, processor)` where
the processor's `__call__(text=..., images=..., return_tensors="pt", padding=True)` returns
`input_ids`/`attention_mask` or `pixel_values`, and the model has `get_image_features(pixel_values)`,
`get_text_features(input_ids, attention_mask)` and a `config`. `clip_score_metric` builds that pair
for either kind of CLIP, so both take one code path, offline:

    metric = clip_score_metric("runs/clip/<run>/checkpoints/last.ckpt")   # a zoo clip (or the model itself)
    metric = clip_score_metric("/models/clip-vit-base-patch32")            # CLIPModel.save_pretrained folder
    metric.update(images, captions)       # images: uint8 (N, C, H, W) in [0, 255], or float in [0, 1]
    metric.compute()                      # max(100 * mean cosine, 0), torchmetrics' definition

Images: uint8 are taken as [0, 255] (torchmetrics' and HuggingFace's convention), floating point as
[0, 1] (what zoo's `generate()` returns); both backends see the same pixels either way.

zoo never imports a plugin by name: a zoo CLIP is recognised by what it offers (`preprocess`,
`tokenize`, `encode_image`, `encode_tokens`), and a checkpoint is opened through the registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

ZOO_CLIP_METHODS = ("preprocess", "tokenize", "encode_image", "encode_tokens")


def is_zoo_clip(model: Any) -> bool:
    return all(callable(getattr(model, name, None)) for name in ZOO_CLIP_METHODS)


class ZooCLIPFeatures(nn.Module):
    """A zoo clip seen as what CLIPScore calls: `get_image_features`, `get_text_features`, `config`."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip.eval()
        # no `text_config`: CLIPScore then skips its truncation, which the tokenizer already did
        self.config = SimpleNamespace(model_type="zoo-clip")

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Embeddings of `pixel_values` made by `ZooCLIPProcessor` ([-1, 1], the model's size)."""
        return self.clip.encode_image(pixel_values.to(self.clip.device))

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        mask = input_ids != 0 if attention_mask is None else attention_mask.bool()
        return self.clip.encode_tokens(input_ids.to(self.clip.device), mask.to(self.clip.device))


class ZooCLIPProcessor:
    """The processor half: the clip's own tokenizer and image preprocessing, HuggingFace-style outputs."""

    def __init__(self, clip: Any) -> None:
        self.clip = clip

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: torch.Tensor | Sequence[torch.Tensor] | None = None,
        return_tensors: str = "pt",
        padding: bool | str = True,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        if return_tensors != "pt":
            raise ValueError(
                f"ZooCLIPProcessor returns PyTorch tensors only (return_tensors='pt'), not {return_tensors!r}"
            )
        out: dict[str, torch.Tensor] = {}
        if images is not None:
            out["pixel_values"] = self.clip.preprocess(images).cpu()
        if text is not None:
            ids, mask = self.clip.tokenize(text)  # padded to the model's max_length, whatever `padding` says
            out["input_ids"], out["attention_mask"] = ids.cpu(), mask.long().cpu()
        if not out:
            raise ValueError("ZooCLIPProcessor needs text= or images=")
        return out


class UInt8ImagesProcessor:
    """A HuggingFace processor that first turns float images in [0, 1] into uint8 [0, 255].

    CLIPImageProcessor rescales every input by 1/255; given zoo's [0, 1] floats it would score
    near-black images. uint8 images and text pass through unchanged.
    """

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, *args: Any, images: Any = None, **kwargs: Any) -> Any:
        if images is not None:
            images = [images] if torch.is_tensor(images) and images.ndim == 3 else list(images)
            images = [
                i if i.dtype == torch.uint8 else (i.float().clamp(0, 1) * 255).round().to(torch.uint8)
                for i in images
            ]
            kwargs["images"] = images
        return self.processor(*args, **kwargs)


def _zoo_clip_pair(clip: Any) -> tuple[ZooCLIPFeatures, ZooCLIPProcessor]:
    return ZooCLIPFeatures(clip), ZooCLIPProcessor(clip)


def _huggingface_pair(folder: Path) -> tuple[Any, UInt8ImagesProcessor]:
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError as err:
        raise ImportError(
            f"'{folder}' is a HuggingFace model folder, which needs transformers: pip install 'transformers>=4.57,<5'"
        ) from err
    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    return model, UInt8ImagesProcessor(processor)


def clip_model_and_processor(model_or_path: Any) -> tuple[Any, Any]:
    """The `(model, processor)` pair CLIPScore calls, for a zoo clip (model or checkpoint file) or a
    local HuggingFace CLIP folder (`CLIPModel.save_pretrained` + `CLIPProcessor.save_pretrained`)."""
    if is_zoo_clip(model_or_path):
        return _zoo_clip_pair(model_or_path)
    if not isinstance(model_or_path, (str, Path)):
        raise TypeError(
            f"expected a zoo clip model, a clip checkpoint file or a HuggingFace CLIP folder, got "
            f"{type(model_or_path).__name__}"
        )
    path = Path(model_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"'{path}' is a folder but not a HuggingFace CLIP (no config.json): save one with "
                "CLIPModel.save_pretrained(DIR) and CLIPProcessor.save_pretrained(DIR), or give a zoo clip checkpoint"
            )
        return _huggingface_pair(path)
    if path.is_file():
        from zoo.checkpoint import load_model

        model = load_model(path)
        if not is_zoo_clip(model):
            raise ValueError(
                f"'{path}' holds a {type(model).__name__}, not a CLIP: a CLIP score needs a checkpoint of "
                "`python -m zoo.fit --model clip` or a HuggingFace CLIP folder"
            )
        return _zoo_clip_pair(model)
    raise FileNotFoundError(
        f"no CLIP at '{path}': give a zoo clip checkpoint or a local HuggingFace CLIP folder. Hub names such as "
        "'openai/clip-vit-base-patch32' are not downloaded here; fetch the model on a connected machine with "
        "save_pretrained(DIR) and pass DIR"
    )


def clip_score_metric(model_or_path: Any, **metric_kwargs: Any) -> Any:
    """torchmetrics' `CLIPScore` over a zoo clip (module or checkpoint path) or a local HuggingFace CLIP
    folder, built through CLIPScore's callable form; `metric_kwargs` go to `CLIPScore`."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    model, processor = clip_model_and_processor(model_or_path)
    return CLIPScore(model_name_or_path=lambda: (model, processor), **metric_kwargs)
