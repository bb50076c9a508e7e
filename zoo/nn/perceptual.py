"""Perceptual distances between images for autoencoder training (`vae`, `vqgan`): LPIPS (Zhang et al. 2018),
and the same construction over zoo's own feature extractor of the data.

    distance = perceptual_network("zoo", data="shapes", image_size=32, channels=3)
    distance(x, y)                                    # (B,), images in [-1, 1]; gradients reach x and y

Both compare two images layer by layer: each layer's features are unit-normalised along the channels at
every position, their squared difference is weighted per channel, averaged over positions, and the
layers are summed (LPIPS, eq. 1).

- `"lpips"`: real LPIPS, VGG16 (relu1_2 ... relu5_3) with its learned per-channel weights. Nothing is
  downloaded: the VGG16 ImageNet weights are read from a local file (torchvision's `vgg16-397923af.pth`,
  given as a path, else `$ZOO_VGG16_WEIGHTS`, else `$ZOO_CACHE/weights/`, as the FID InceptionV3 is
  found), and the LPIPS v0.1 per-channel weights from the `vgg.pth` that torchmetrics ships (or a given file).
- `"auto"` (the default): `"zoo"` where the data has such a classifier (shapes, digits), else no perceptual
  term, with a warning naming how to have LPIPS.
- `"zoo"`: zoo's trained classifier of the data (`zoo.metrics.extractors.image_extractor`, the network the
  FID of embedded data uses), its four convolution blocks as the layers, every channel weighted 1 (LPIPS'
  "baseline" without learned weights) and the layers averaged: a distance in [0, 4], larger than LPIPS'
  (2.7 for an untrained autoencoder's output, where a weight of 1 drowns the L1 term), hence a weight of
  about 0.1 (the vqgan recipe's) where LPIPS takes 1. VGG's ImageNet features cannot be had offline; this network knows
  exactly what the data's images are made of (shape, colour, size), so its features are the perceptual
  space to match. Caveat: it is also the FID extractor, so a model trained with it is partly optimised on
  the features its reconstruction FID is then measured in.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

VGG16_ENV = "ZOO_VGG16_WEIGHTS"
VGG16_FILE = "vgg16-397923af.pth"  # torchvision's ImageNet VGG16 (IMAGENET1K_V1)
VGG16_URL = "https://download.pytorch.org/models/" + VGG16_FILE
# torchvision's vgg16.features indices where LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
VGG16_TAPS = (4, 9, 16, 23, 30)
PERCEPTUAL_NETWORKS = ("auto", "zoo", "lpips")


def normalize_channels(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit length along the channels at every position (LPIPS' normalisation)."""
    return features * torch.rsqrt(features.pow(2).sum(1, keepdim=True) + eps)


def layer_distance(a: torch.Tensor, b: torch.Tensor, weight: nn.Module | None = None) -> torch.Tensor:
    """(B,) spatial mean of the channel-weighted squared difference of normalised features (all weights 1
    when `weight` is None; else a 1x1 convolution to one channel, LPIPS' linear layer)."""
    squared = (normalize_channels(a) - normalize_channels(b)).pow(2)
    weighted = squared.sum(1, keepdim=True) if weight is None else weight(squared)
    return weighted.mean(dim=(1, 2, 3))


class PerceptualDistance(nn.Module):
    """Frozen: sum over layers of `layer_distance`; `stages` map one layer's input to the next layer's
    features, `weights` (one per layer or None) weight the channels."""

    def __init__(self, stages: list[nn.Module], weights: list[nn.Module] | None = None) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.weights = nn.ModuleList(weights) if weights is not None else None
        self.requires_grad_(False)
        self.eval()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B,) distances between images x and y in [-1, 1]."""
        with torch.autocast(x.device.type, enabled=False):  # small nets; their gradients kept in fp32
            a, b = self.prepare(x.float()), self.prepare(y.float())
            total = x.new_zeros(len(x), dtype=torch.float32)
            for i, stage in enumerate(self.stages):
                a, b = stage(a), stage(b)
                total = total + layer_distance(a, b, None if self.weights is None else self.weights[i])
        # unweighted layers are averaged, so the distance lies in [0, 4] (LPIPS sums its weighted ones)
        return total if self.weights is not None else total / len(self.stages)

    def train(self, mode: bool = True) -> PerceptualDistance:
        return super().train(False)  # frozen: batch norms keep their running statistics


# --- zoo's extractor of the data ----------------------------------------------------------------


def zoo_perceptual(data: str, image_size: int, channels: int) -> PerceptualDistance:
    """The LPIPS-style distance over zoo's trained classifier of `data` (trained and cached on first use)."""
    from zoo.metrics.extractors import image_extractor

    body = image_extractor(data, image_size, channels, verbose=False).body
    # body: block, pool, block, pool, block, pool, block; a layer = (pool, block) after the first. The
    # classifier takes images in [0, 1] and maps them to [-1, 1] first: ours are in [-1, 1] already.
    stages = [body[0]] + [nn.Sequential(body[i], body[i + 1]) for i in range(1, len(body), 2)]
    return PerceptualDistance(stages)


# --- LPIPS (VGG16) ------------------------------------------------------------------------------


class LPIPS(PerceptualDistance):
    """LPIPS v0.1 with the VGG16 backbone; random weights until `load` fills them."""

    CHANNELS = (64, 128, 256, 512, 512)

    def __init__(self) -> None:
        from torchvision.models.vgg import cfgs, make_layers

        features = make_layers(cfgs["D"])  # torchvision's vgg16.features
        bounds = (0, *VGG16_TAPS)
        stages = [features[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        weights = [nn.Conv2d(c, 1, 1, bias=False) for c in self.CHANNELS]
        super().__init__(stages, weights)
        # the ImageNet statistics LPIPS' ScalingLayer maps [-1, 1] images with
        self.register_buffer(
            "shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.shift) / self.scale

    def load(self, vgg_weights: str | Path, lin_weights: str | Path | None = None) -> LPIPS:
        """VGG16 from torchvision's state dict file (`features.N.*` keys; the classifier is ignored) and the
        per-channel weights from an LPIPS `vgg.pth` (`linK.model.1.weight`; default: torchmetrics' copy)."""
        vgg = _read_state(vgg_weights, "features.0.weight", "a torchvision VGG16 state dict")
        for stage in self.stages:
            for name, tensor in stage.state_dict().items():
                key = f"features.{name}"  # a slice of a Sequential keeps the layers' indices
                if key not in vgg or vgg[key].shape != tensor.shape:
                    raise ValueError(
                        f"'{vgg_weights}' is not torchvision's VGG16: {key} is missing or misshapen"
                    )
                tensor.copy_(vgg[key])
        lin_path = Path(lin_weights) if lin_weights is not None else _torchmetrics_lpips_weights()
        lin = _read_state(lin_path, "lin0.model.1.weight", "an LPIPS VGG weights file (vgg.pth)")
        for i, weight in enumerate(self.weights or []):
            weight.weight.data.copy_(lin[f"lin{i}.model.1.weight"])
        return self


def _read_state(path: str | Path, key: str, what: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"'{path}' is not a readable PyTorch weights file ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(state, dict) or key not in state:
        raise ValueError(f"'{path}' is not {what} (no '{key}')")
    return state


def _torchmetrics_lpips_weights() -> Path:
    import torchmetrics.functional.image.lpips as tm_lpips

    return Path(tm_lpips.__file__).parent / "lpips_models" / "vgg.pth"


class PerceptualWeightsError(FileNotFoundError):
    """The VGG16 weights of LPIPS are not on this machine (zoo never downloads them)."""


def vgg16_weights_path(weights: str | Path | None = None) -> Path:
    """The local VGG16 weights file: `weights`, else `$ZOO_VGG16_WEIGHTS`, else `$ZOO_CACHE/weights/`."""
    from zoo.metrics.extractors import cache_dir

    where = (
        f"zoo does not download them: fetch {VGG16_FILE} ({VGG16_URL}) on a machine with network access "
        f"and put it at {cache_dir() / 'weights' / VGG16_FILE}, or pass its path "
        f"(--model.perceptual_weights PATH) or set {VGG16_ENV}=PATH. Offline, use --model.perceptual_network zoo."
    )
    if weights is not None or os.environ.get(VGG16_ENV):
        path = Path(weights if weights is not None else os.environ[VGG16_ENV]).expanduser()
        if not path.is_file():
            raise PerceptualWeightsError(f"the LPIPS VGG16 weights '{path}' are not a file. {where}")
        return path
    path = cache_dir() / "weights" / VGG16_FILE
    if not path.is_file():
        raise PerceptualWeightsError(f"no VGG16 weights for LPIPS found. {where}")
    return path


def perceptual_choice(choice: str, data: str | None) -> str | None:
    """What `choice` means for `data`: "auto" is "zoo" where zoo has a trained classifier of the data (the
    embedded data sets), else None (no perceptual term: LPIPS needs weights the user brings, at its own weight)."""
    from zoo.metrics.extractors import RECIPES

    if choice != "auto":
        return choice
    return "zoo" if data in RECIPES else None


def perceptual_network(
    choice: str,
    *,
    data: str | None = None,
    image_size: int = 32,
    channels: int = 3,
    weights: str | Path | None = None,
) -> PerceptualDistance:
    """The frozen distance `choice` names ("zoo" needs `data`, an embedded datamodule's registry name)."""
    if choice == "lpips":
        return LPIPS().load(vgg16_weights_path(weights))
    if choice != "zoo":
        raise ValueError(
            f"unknown perceptual network {choice!r}; choose one of {', '.join(PERCEPTUAL_NETWORKS)}"
        )
    from zoo.metrics.extractors import RECIPES

    if data not in RECIPES:
        raise ValueError(
            f"the 'zoo' perceptual network is zoo's trained classifier of the data, which exists for "
            f"{', '.join(RECIPES)}, not for {data!r}: pass --model.perceptual_network lpips with VGG16 weights "
            "(--model.perceptual_weights PATH), or --model.perceptual_weight 0"
        )
    return zoo_perceptual(data, image_size, channels)
