"""Cascades (Imagen, Saharia et al. 2022; Ho et al. 2022): a base model's images raised in resolution by one
super-resolution stage after another, as `python -m zoo.sample --ckpt BASE --cascade SR [--cascade SR2]`.

A super-resolution stage is any family whose hyper-parameters hold `low_resolution`, `image_size` and
`in_channels` and whose `generate(n, condition=LOW)` takes the low-resolution images (n, C, low_resolution,
low_resolution) in [0, 1] and returns (n, C, image_size, image_size) in [0, 1]: `sr_diffusion`, and
third-party families that keep the contract. Each stage's input must be the previous stage's output in size
and channels; `Cascade` checks it from the hyper-parameters before anything is generated (when the base
says its size) and on the images themselves between stages.

    cascade = Cascade(base, [("sr.ckpt", sr)], stage_options={"noise_level": 0.2})
    images = cascade.generate(8, condition=["a red circle"] * 8, generator=g)   # (8, 3, 32, 32) in [0, 1]
    cascade.record   # [{"stage": "base", ...}, {"stage": "sr.ckpt", "noise_level": 0.2, ...}]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # zoo.sample imports this module; torch comes later, when a model is loaded
    import torch

__all__ = ["Cascade", "CascadeError", "is_upscaler", "output_shape"]


class CascadeError(ValueError):
    """Stages that do not chain: a stage that is no upscaler, or one whose input size is not its predecessor's output."""


def is_upscaler(model: Any) -> bool:
    """Whether `model` is a super-resolution stage (its hyper-parameters have `low_resolution` and `image_size`)."""
    hparams = getattr(model, "hparams", {}) or {}
    return "low_resolution" in hparams and "image_size" in hparams


def _family(model: Any) -> str:
    from zoo import registry

    try:
        return registry.name_of(type(model))
    except Exception:  # a model built outside the registry: its class name says enough
        return type(model).__name__


def output_shape(model: Any) -> tuple[int, int] | None:
    """(channels, side) of the images `model.generate` makes, read from its hyper-parameters
    (`in_channels` or `channels`, and `image_size`), or None when they do not say."""
    hparams = getattr(model, "hparams", {}) or {}
    size = hparams.get("image_size")
    channels = hparams.get("in_channels", hparams.get("channels"))
    if not isinstance(size, int) or not isinstance(channels, int):
        return None
    return channels, size


def _describe(shape: tuple[int, int]) -> str:
    return f"{shape[0]}-channel {shape[1]}x{shape[1]}"


def check_chain(previous: str, made: tuple[int, int], stage_name: str, stage: Any) -> None:
    """A CascadeError naming both sizes when `stage` does not upscale what `previous` makes (`made`)."""
    if not is_upscaler(stage):
        raise CascadeError(
            f"--cascade {stage_name} holds a {_family(stage)} model, not a super-resolution stage "
            "(sr_diffusion): a stage must take low-resolution images (hyper-parameters low_resolution, image_size)"
        )
    wanted = (int(stage.hparams["in_channels"]), int(stage.hparams["low_resolution"]))
    if wanted != made:
        raise CascadeError(
            f"--cascade {stage_name} upscales {_describe(wanted)} images, but {previous} makes "
            f"{_describe(made)} ones: each stage's low_resolution must be its predecessor's output size "
            f"(train one with --model.low_resolution {made[1]}, or give the stages in order)"
        )


class Cascade:
    """A base model followed by super-resolution stages, with the `generate` and `modality` of an image family,
    so zoo.sample's writers take it as they take one model. `stages` are (name, model) pairs (the name, a
    checkpoint path, is what errors and the record say); `stage_options` go to every stage's `generate`
    (noise_level, sampler, steps). `record` holds, after each `generate`, what every stage made."""

    modality = "image"

    def __init__(
        self,
        base: Any,
        stages: list[tuple[str, Any]],
        *,
        base_name: str = "the base model",
        stage_options: dict[str, Any] | None = None,
    ) -> None:
        if getattr(base, "modality", None) != "image":
            raise CascadeError(
                f"a cascade starts from an image model; {base_name} is a {_family(base)} model of "
                f"{getattr(base, 'modality', 'unknown')}"
            )
        self.base, self.stages, self.base_name = base, stages, base_name
        self.stage_options = dict(stage_options or {})
        self.record: list[dict[str, Any]] = []
        previous, made = base_name, output_shape(base)
        for name, stage in stages:
            if made is not None:  # known before generating: fail before minutes of sampling
                check_chain(previous, made, name, stage)
            elif not is_upscaler(stage):
                check_chain(previous, (0, 0), name, stage)
            previous, made = name, output_shape(stage)
        self.hparams = getattr(stages[-1][1], "hparams", {}) if stages else getattr(base, "hparams", {})

    def generate(
        self, n: int, *, condition: Any = None, generator: torch.Generator | None = None, **options: Any
    ) -> torch.Tensor:
        """`n` images of the last stage's size in [0, 1]: the base's (with `condition` and `options`), then
        each stage's upscaling of its predecessor's (with `stage_options`), all from one generator."""
        images = self.base.generate(n, condition=condition, generator=generator, **options)
        base = {"stage": self.base_name, "family": _family(self.base), "size": int(images.shape[-1])}
        self.record = [base | dict(getattr(self.base, "last_sampling", {}) or {})]  # an upscaler as base too
        previous = self.base_name
        for name, stage in self.stages:
            check_chain(previous, (int(images.shape[1]), int(images.shape[-1])), name, stage)
            images = stage.generate(n, condition=images, generator=generator, **self.stage_options)
            entry = {"stage": name, "family": _family(stage), "size": int(images.shape[-1])}
            self.record.append(entry | dict(getattr(stage, "last_sampling", {}) or {}))
            previous = name
        return images
